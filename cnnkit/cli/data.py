"""`cnnkit data`: where a dataset was looked for, what was found there, the cache; `--download` fetches it.

Also the download's progress view, which `cnnkit train` uses when a run fetches the data first:
the library reports bytes through a callback, and only this module draws.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cnnkit.cli.app import _guard, app, console


class DownloadView:
    """A progress callback (bytes so far, total): a rich bar on a terminal, a start and an end line always."""

    def __init__(self, what: str = "CIFAR-10") -> None:
        self.what = what
        self.progress = None
        self.task_id = None
        self.start = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.start is None:
            self.start = time.perf_counter()
            size = f" ({total / 1e6:.0f} MB)" if total else ""
            print(f"downloading {self.what}{size}", flush=True)
            if sys.stdout.isatty():
                from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

                self.progress = Progress("  ", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                         TimeRemainingColumn(), console=console)
                self.progress.start()
                self.task_id = self.progress.add_task("download", total=total)
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done)

    def close(self, folder: Path | None) -> None:
        """End the bar; `folder` is where the data went (None: nothing was downloaded)."""
        if self.progress is not None:
            self.progress.stop()
        if folder is not None and self.start is not None:
            print(f"downloaded and checked (md5) in {time.perf_counter() - self.start:.0f} s → {folder}", flush=True)


def fetch_with_progress(fetch, *args, **kwargs):
    """Run a library fetch with a DownloadView as its `progress`; returns what it returns. The bar names
    the dataset of the config passed first (cnnkit.data.fetch_data's), else CIFAR-10."""
    view = DownloadView(_title(args[0]) if args else "CIFAR-10")
    folder = None
    try:
        folder = fetch(*args, progress=view, **kwargs)
    finally:
        view.close(folder)
    return folder


def _title(config) -> str:
    from cnnkit.data import DATASETS

    entry = DATASETS.get(getattr(getattr(config, "data", None), "dataset", ""), None)
    return entry.source.title if entry is not None and entry.source is not None else "CIFAR-10"


@app.command("data")
@_guard
def data_cmd(
    data_root: Optional[str] = typer.Option(None, "--data-root", help="The dataset's folder (beats CNNKIT_DATA and "
                                            "data.root; default ./data)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Read data.* (dataset, root, cache_dir, "
                                          "labels, input_size, grayscale, subset) from it."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cifar10, cifar100, mnist, fashion_mnist or "
                                          "imagefolder (default: the config's, else cifar10)."),
    download: bool = typer.Option(False, "--download", help="Fetch the dataset into the data root if it is not there."),
):
    """Show where a dataset is looked for and what is there (layout, counts, classes, cache); --download fetches it."""
    from pydantic import ValidationError

    from cnnkit.config import DataConfig, load_config
    from cnnkit.data import DATASETS, inspect_source
    from cnnkit.data.datasets import decoding_for
    from cnnkit.data.sources import shown_path
    from cnnkit.errors import ConfigError

    cfg = load_config(config, []).data if config is not None else DataConfig()
    if dataset is not None:
        if dataset not in DATASETS:
            from cnnkit.config import _did_you_mean

            raise ConfigError(f"--dataset {dataset}: unknown dataset{_did_you_mean(dataset, DATASETS)}; choose one "
                              f"of: {', '.join(DATASETS)}")
        try:
            cfg = DataConfig(**{**cfg.model_dump(), "dataset": dataset})
        except ValidationError as exc:  # e.g. the config's labels: coarse for a dataset without superclasses
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"--dataset {dataset}: data.{key}: {err['msg'].removeprefix('Value error, ')}") from None
    entry = DATASETS[cfg.dataset]
    if entry.source is None:
        print(f"dataset: {cfg.dataset}: {entry.description}; nothing to read from disk")
        return
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    kwargs = {"cache_dir": cache_dir, "decoding": decoding_for(cfg)}
    if download:
        view = DownloadView(entry.source.title)
        report = None
        try:
            report = inspect_source(entry.source, data_root, cfg.root, download=True, progress=view, **kwargs)
        finally:
            view.close(report.downloaded if report is not None else None)
        if report.downloaded is None:
            print(f"already there: {shown_path(report.data.folder)}; nothing downloaded")
    else:
        report = inspect_source(entry.source, data_root, cfg.root, **kwargs)
    d = report.data
    if cfg.dataset != "cifar10":  # CIFAR-10's report stays as it always was
        print(f"dataset: {cfg.dataset}: {entry.description}")
    print(f"data root: {report.root.describe()}")
    c, h, w = d.test.images.shape[1:]
    brought = f", each picture brought to {h}×{w} (data.input_size)" if entry.num_classes is None else ""
    print(f"found: {d.layout} {shown_path(d.folder)}{brought}")
    val = f", val {len(d.val):,} (its own val/)" if d.val is not None else ""
    labels = f" ({cfg.labels} labels)" if entry.coarse_classes is not None else ""
    print(f"images: {c}×{h}×{w} uint8; train {len(d.train):,}{val}, test {len(d.test):,}; "
          f"{len(d.classes)} classes{labels}")
    if d.skipped:
        print(f"skipped: {d.skipped:,} file{'s' if d.skipped != 1 else ''} in the class folders that "
              f"{'are' if d.skipped != 1 else 'is'} not pictures by name (.bmp .jpeg .jpg .png .webp)")
    splits = ["train", *(["val"] if d.val is not None else []), "test"]
    table = Table(title="images per class")
    for col in ("class", *splits):
        table.add_column(col, justify="left" if col == "class" else "right")
    counts = [report.counts(split) for split in splits]
    for i, name in enumerate(d.classes):
        table.add_row(name, *(f"{per_class[i]:,}" for per_class in counts))
    console.print(table)
    state = {"read": "read from it", "written": "decoded and written now",
             "not writable": "decoded; not written (the folder is not writable)"}[d.cache]
    print(f"cache: {shown_path(d.cache_path)} ({state})")
