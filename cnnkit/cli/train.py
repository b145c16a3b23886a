"""`cnnkit train`: parse, hand the config to `fit`, render its progress events."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from cnnkit.cli.app import ConfigOpt, SetOpt, TrustCodeOpt, _guard, _warn, app, console


def _argv_without_nproc(argv: list[str]) -> list[str]:
    """The same command line minus --nproc, for each worker process."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


class _TrainView:
    """Renders fit()'s events: a live progress bar on a terminal, one plain line per epoch always."""

    def __init__(self, quiet: bool):
        self.live = sys.stdout.isatty() and not quiet
        self.progress = None
        self.task_id = None
        self.test_is_train = False

    def __call__(self, event: dict) -> None:
        getattr(self, f"on_{event['kind']}")(event)

    def on_start(self, e: dict) -> None:
        where = f"resuming after epoch {e['start_epoch']}" if e["start_epoch"] else "new run"
        if e.get("init_from") and not e["start_epoch"]:
            where = f"new run from the weights of {e['init_from']}"
        self.test_is_train = e.get("test_is_train", False)
        print(f"cnnkit train: {e['model']} ({e['params']:,} params), {where} → {e['run_dir']}")
        world = f", {e['world_size']} processes" if e["world_size"] > 1 else ""
        print(f"{e['runtime']}{world}")
        split = f"train {e['train_n']:,}" + (f" / val {e['val_n']:,}" if e["val_n"] else "") + (
            f" / test {e['test_n']:,}" if e["test_n"] else "")
        # setup_s covers data, model and optimiser (whose first use imports torch._dynamo, ~2 s here).
        print(f"data: {e['source']}: {split}; set-up {e['setup_s']:.1f} s", flush=True)
        for warning in e.get("warnings", ()):
            _warn(warning)
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                                     console=console, transient=True)
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=e["steps_per_epoch"], epoch=e["start_epoch"] + 1,
                                                  loss=float("nan"))

    def on_warmup(self, e: dict) -> None:
        print(f"warm-up: {e['steps']} steps in {e['seconds']:.1f} s (compiling, autotuning), then undone; "
              "not counted as training time", flush=True)

    def on_step(self, e: dict) -> None:
        if self.progress is not None:
            # The loss arrives only at the loop's sync points; between them the bar keeps the last one.
            known = {"loss": e["loss"]} if e["loss"] is not None else {}
            self.progress.update(self.task_id, completed=e["step"], total=e["steps"], epoch=e["epoch"], **known)

    def on_epoch(self, e: dict) -> None:
        parts = [f"epoch {e['epoch']:>3}", f"train_loss {e['train_loss']:.4f}"]
        for key in ("train_acc", "val_acc", "test_acc"):
            if key in e:
                parts.append(f"{key} {e[key]:.4f}")
        for key in ("val_mse", "test_mse"):
            if key in e:
                # The stripes toy's "test" picture is its training picture: say what the number is.
                label = "fit_mse" if key == "test_mse" and self.test_is_train else key
                parts.append(f"{label} {e[key]:.3g}")
        parts += [f"lr {e['lr']:.2e}", f"{e['epoch_s']:.1f}s", f"{e['images_per_s']:,.0f} img/s"]
        line = "  ".join(parts) + ("  *" if e.get("best") else "")
        if self.progress is not None:
            self.progress.console.print(line, highlight=False, soft_wrap=True)
            self.progress.reset(self.task_id, epoch=e["epoch"] + 1)
        else:
            print(line, flush=True)

    def on_end(self, e: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
        r = e["result"]
        if r.kernel is not None:
            k = r.kernel
            print(f"learned kernel: {[[round(v, 4) for v in row] for row in k]}  (target [[1, -1]])")
        if r.tta is not None:
            print(f"with TTA ({len(r.tta_views)} views averaged): test accuracy {r.tta.accuracy:.4f}, "
                  f"loss {r.tta.loss:.4f}")
        if r.test is not None:
            print(f"best.pt (epoch {r.best_epoch}): {r.task.fit_line(r.test, r.test_is_train)}")
        warm = f", warm-up {r.extra['warmup_s']:.1f} s apart" if r.extra.get("warmup_s") else ""
        print(f"run folder: {r.run_dir}  (training {r.extra['train_s']:.1f} s{warm}; launch → report "
              f"{r.extra['launch_to_report_s']:.1f} s)")
        for warning in r.warnings:
            _warn(warning)


@app.command("train")
@_guard
def train_cmd(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    data_root: Optional[str] = typer.Option(None, "--data-root",
                                            help="CIFAR-10 folder (beats CNNKIT_DATA and data.root)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: config name + timestamp)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder of that name."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run from its last.pt."),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="A new run starting from a checkpoint's weights, with its own fresh schedule "
        "(a fine-tune); the same as --set train.init_from=PATH."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain lines only, no progress bar."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (DDP through torch.distributed.run)."),
    trust_code: bool = TrustCodeOpt,
):
    """Train a model: `cnnkit train --config configs/lenet.yaml`."""
    from cnnkit.errors import Interrupted
    from cnnkit.models.trust import trust_checkpoints

    trust_checkpoints(trust_code)  # --resume of a checkpoint whose model.name you have not trained with here

    if nproc > 1:
        from cnnkit.training.distributed import launch

        _check_before_launch(config, set_, resume, init_from, nproc, data_root)
        raise typer.Exit(launch(nproc, _argv_without_nproc(sys.argv[1:])))

    try:
        _train(config, set_, data_root, name, overwrite, resume, init_from, quiet)
    except Interrupted as exc:
        # Under --nproc every rank stops together with the same line; rank 0 says it once.
        if int(os.environ.get("RANK", "0")) > 0:
            raise typer.Exit(exc.exit_code) from None
        raise


def _check_before_launch(config, set_, resume, init_from, nproc: int, data_root: Optional[str] = None) -> None:
    """The config, checked once here before `nproc` processes start: a typo or a batch that does not
    split over them is one line and exit 2 at once, not the same error from every rank after each
    has imported torch. The ranks check everything again (and the data, the devices) themselves."""
    from cnnkit.build import check_model_builds
    from cnnkit.config import load_config
    from cnnkit.training.distributed import check_batch
    from cnnkit.training.fit import resume_config

    if resume is not None:
        cfg, _ = resume_config(resume, set_ or [])
    elif config is not None:
        init = [f"train.init_from={init_from}"] if init_from is not None else []
        cfg = load_config(config, [*(set_ or []), *init])
    else:
        return  # the ranks say "no config" themselves
    check_batch(cfg.train.batch_size, world=nproc)
    check_model_builds(cfg, data_root)


def _train(config, set_, data_root, name, overwrite, resume, init_from, quiet) -> None:
    from cnnkit.config import load_config
    from cnnkit.training.fit import fit, resume_config

    if resume is not None:
        if init_from is not None:
            from cnnkit.errors import ConfigError

            raise ConfigError("--resume continues a run and --init-from starts a new one; pass one of them")
        cfg, payload = resume_config(resume, set_ or [])
        _fetch_data(cfg, data_root)
        fit(cfg, data_root=data_root, resume=resume, resume_payload=payload, report=_TrainView(quiet),
            launched=_launched())
        return
    if config is None:
        from cnnkit.errors import ConfigError

        raise ConfigError("no config: pass --config configs/lenet.yaml (or --resume runs/NAME/last.pt)")
    # The checkpoint is checked now, before any data loads: a typo fails in a second.
    init = [f"train.init_from={init_from}"] if init_from is not None else []
    cfg = load_config(config, [*(set_ or []), *init])
    if cfg.train.init_from is not None:
        from cnnkit.training.checkpoint import load_checkpoint

        load_checkpoint(cfg.train.init_from)
    from cnnkit.build import check_model_builds

    check_model_builds(cfg, data_root)  # the model and its optimisers too, before a download could start
    _fetch_data(cfg, data_root)
    fit(cfg, data_root=data_root, run_name=name, overwrite=overwrite, report=_TrainView(quiet), launched=_launched())


def _launched() -> float:
    import cnnkit

    return cnnkit.IMPORTED_AT


def _fetch_data(cfg, data_root: Optional[str]) -> None:
    """Download CIFAR-10 first (with a progress bar) when the run would download it: into ./data when
    nothing names a root, or with data.download. A no-op when the data is there."""
    from cnnkit.cli.data import fetch_with_progress
    from cnnkit.data import fetch_data

    fetch_with_progress(fetch_data, cfg, data_root)


