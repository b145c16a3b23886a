"""`cnnkit data`: where CIFAR-10 was looked for, what was found there, the cache; `--download` fetches it.

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
    """Run a library fetch with a DownloadView as its `progress`; returns what it returns."""
    view = DownloadView()
    folder = None
    try:
        folder = fetch(*args, progress=view, **kwargs)
    finally:
        view.close(folder)
    return folder


@app.command("data")
@_guard
def data_cmd(
    data_root: Optional[str] = typer.Option(None, "--data-root",
                                            help="CIFAR-10 folder (beats CNNKIT_DATA and data.root; default ./data)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Read data.root and data.cache_dir from it."),
    download: bool = typer.Option(False, "--download", help="Fetch CIFAR-10 into the data root if it is not there."),
):
    """Show where CIFAR-10 is looked for and what is there (layout, counts, cache); --download fetches it."""
    from cnnkit.config import load_config
    from cnnkit.data import inspect_cifar10
    from cnnkit.data.sources import shown_path

    cfg = load_config(config, []).data if config is not None else None
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg is not None and cfg.cache_dir else None
    config_root = cfg.root if cfg is not None else None
    if download:
        view = DownloadView()
        report = None
        try:
            report = inspect_cifar10(data_root, config_root, cache_dir=cache_dir, download=True, progress=view)
        finally:
            view.close(report.downloaded if report is not None else None)
        if report.downloaded is None:
            print(f"already there: {shown_path(report.data.folder)}; nothing downloaded")
    else:
        report = inspect_cifar10(data_root, config_root, cache_dir=cache_dir)
    d = report.data
    print(f"data root: {report.root.describe()}")
    print(f"found: {d.layout} {shown_path(d.folder)}")
    c, h, w = d.test.images.shape[1:]
    print(f"images: {c}×{h}×{w} uint8; train {len(d.train):,}, test {len(d.test):,}; {len(d.classes)} classes")
    table = Table(title="images per class")
    for col in ("class", "train", "test"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, n_train, n_test in zip(d.classes, report.counts("train"), report.counts("test"), strict=True):
        table.add_row(name, f"{n_train:,}", f"{n_test:,}")
    console.print(table)
    state = {"read": "read from it", "written": "decoded and written now",
             "not writable": "decoded; not written (the folder is not writable)"}[d.cache]
    print(f"cache: {shown_path(d.cache_path)} ({state})")
