"""`fit`: train a config to the end, writing a run folder; plain functions, as in torchvision's train.py.

`fit` reads as the table of contents of a run: runtime, data, run folder, training state
(cnnkit.training.state), the epoch loop (cnnkit.training.loop) under signal handling, checkpoints, and the final
test. Nothing here prints: `fit` hands progress events to a `report` function, and the CLI
renders them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnkit.build import check_model_builds, check_model_fits, input_shape, views_break_channels_last
from cnnkit.config import Config, apply_overrides, config_from_dict, parse_override
from cnnkit.data import Prepared, Split, prepare_data, to_device
from cnnkit.device import Runtime, setup_runtime
from cnnkit.errors import CheckpointError, ConfigError, Interrupted, TrainingError, one_line
from cnnkit.evaluation.evaluate import evaluate, tta_views
from cnnkit.evaluation.metrics import EvalResult
from cnnkit.fileio import atomic_write_text
from cnnkit.models.external import object_name, resolved_name, trust_name
from cnnkit.optim.registry import SCHEDULES_OVER_THE_RUN
from cnnkit.reports.curves import write_curves
from cnnkit.tasks import Task, task_for
from cnnkit.training import distributed
from cnnkit.training.checkpoint import load_checkpoint, load_model_state, require_trusted, save_checkpoint
from cnnkit.training.inputs import EpochInputs, TrainInputs, train_inputs
from cnnkit.training.loop import Report, StopFlag, StopRequested, kept, train_one_epoch
from cnnkit.training.run_folder import choose_run_dir, record_final, write_metrics
from cnnkit.training.state import TrainState, build_state
from cnnkit.training.tensorboard import TensorBoardReport, require_tensorboard
from cnnkit.training.warmup import warm_up, warmup_steps


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int
    test: EvalResult | None
    classes: list[str]
    task: Task
    kernel: list[list[float]] | None = None
    extra: dict = field(default_factory=dict)
    tta: EvalResult | None = None  # the final test with train.tta's views averaged
    tta_views: list[str] = field(default_factory=list)
    test_is_train: bool = False  # the "test" set is the training data (the edge toy's one picture)
    warnings: list[str] = field(default_factory=list)  # e.g. curves.png could not be drawn


@dataclass
class Run:
    """What stays fixed while a run trains: its config, task, runtime, data and folder."""

    config: Config
    task: Task
    runtime: Runtime
    prepared: Prepared
    run_dir: Path
    report: Report
    wall_start: float

    @property
    def is_main(self) -> bool:
        return distributed.rank() == 0

    def evaluate(self, model: nn.Module, split: Split, runtime: Runtime | None = None) -> EvalResult:
        return evaluate(model, split, task=self.task, runtime=runtime or self.runtime,
                        batch_size=self.config.train.eval_batch_size, mean=self.prepared.mean,
                        std=self.prepared.std, num_classes=len(self.prepared.classes))


def fit(config: Config, *, data_root: str | None = None, run_name: str | None = None, overwrite: bool = False,
        resume: str | Path | None = None, resume_payload: dict | None = None,
        report: Report = lambda event: None, model: nn.Module | None = None,
        launched: float | None = None) -> FitResult:
    """Train `config` to the end, writing a run folder; return the history and the test result.

    `config` itself is left as it was: the run works on a copy (which gains the data's mean/std).
    `model`, a model object (cnnkit.api.train), is trained in place of one built from model.name.
    `launched`: when the command started (time.time()), where the launch-to-report clock starts.
    """
    wall_start = time.time()
    config = config.model_copy(deep=True)
    _name_the_model(config, model, resume)
    dist = distributed.setup(config.train.device)
    layout_note = _layout_that_works(config, model)
    runtime = setup_runtime(dist.device_spec, config.train.precision, config.train.threads,
                            config.train.channels_last, config.train.deterministic)
    runtime.warnings += layout_note
    config.train.precision = runtime.precision  # "auto" resolved: the saved config says what ran
    if distributed.rank() != 0:
        report = lambda event: None  # noqa: E731  (only rank 0 talks)
    distributed.check_batch(config.train.batch_size)
    if config.train.tensorboard:
        require_tensorboard()  # before the data loads: a missing package fails in a second
    task = task_for(config)
    if model is None:
        check_model_builds(config, data_root)  # a model that cannot be built fails now, not after the data loads
    else:
        check_model_fits(config, model, data_root=data_root)
    # The first optimiser imports torch._dynamo (~1 s); do that while the data loads.
    threading.Thread(target=importlib.import_module, args=("torch._dynamo",), daemon=True).start()
    prepared = _prepare(config, data_root)
    if model is not None:  # an image folder's classes are known for sure now
        check_model_fits(config, model, len(prepared.classes))
    payload = (resume_payload or load_checkpoint(resume)) if resume is not None else None
    run = Run(config, task, runtime, prepared, choose_run_dir(config, run_name, overwrite, resume), report,
              wall_start)
    state = build_state(config, runtime, len(prepared.classes), len(prepared.train), payload, str(resume),
                        init_images=_init_images(config, task, prepared) if payload is None else None, model=model)
    if run.is_main:
        atomic_write_text(run.run_dir / "config.yaml", config.to_yaml())
    if config.train.tensorboard and run.is_main:
        report = run.report = TensorBoardReport(run.run_dir, config, state.optimizer, report)
    train, val, test = (to_device(s, runtime.device) for s in (prepared.train, prepared.val, prepared.test))
    inputs, prepare_note = train_inputs(config, task, runtime, train, prepared.mean, prepared.std)
    report(_start_event(run, state, inputs, prepare_note))
    warmup_s = _warm_up(run, state, inputs)
    with stop_on_signals() as stop:
        for epoch in range(state.start_epoch, config.train.epochs):
            _run_epoch(run, state, epoch, inputs, val, test, stop)
    test_result = _final_test(run, state, test)
    result = FitResult(run.run_dir, state.history, state.best["epoch"], test_result,
                       prepared.classes, task, task.learned_kernel(state.model), {"wall_s": time.time() - wall_start},
                       test_is_train=prepared.test is prepared.train)
    if test is not None and config.train.tta != "none" and "tta" not in task.refusals:
        tta_start = time.perf_counter()
        result.tta_views, result.tta = _final_tta(run, state, test)  # its numbers are read back: synced
        result.extra["tta_s"] = time.perf_counter() - tta_start
    # The two clocks, as airbench's and a user's: the training steps alone (warm-up apart), and launch
    # (the command's start; fit's for a caller in Python) to the final report.
    result.extra.update(train_s=sum(r["epoch_s"] for r in state.history), warmup_s=warmup_s,
                        launch_to_report_s=time.time() - (launched or wall_start))
    if run.is_main:
        if test_result is not None:
            record_final(run.run_dir, state.history, _final_entry(run, result))
        result.warnings += _draw_curves(run.run_dir)  # after the numbers: a picture must not cost them
    report({"kind": "end", "result": result})
    distributed.teardown()
    return result


def _warm_up(run: Run, state: TrainState, inputs: TrainInputs) -> float:
    """Compile and autotune before the clock (cnnkit.training.warmup); the seconds it took, 0 when none."""
    steps = warmup_steps(run.config, run.runtime)
    if steps == 0 or state.start_epoch >= run.config.train.epochs:
        return 0.0
    seconds = warm_up(state, inputs, steps, config=run.config, task=run.task, runtime=run.runtime)
    run.report({"kind": "warmup", "steps": steps, "seconds": seconds})
    return seconds


def _name_the_model(config: Config, model: nn.Module | None, resume) -> None:
    """The model.name the run saves. A model object is recorded by its class (object:module.Class); a
    file path becomes absolute, so `cnnkit eval` finds the file from any folder; and a new run's
    import path joins this user's trusted ones, so its checkpoints load without --trust-code."""
    if model is not None:
        if not config.model.name.startswith("object:"):
            config.model.name = object_name(model)
        return
    if resume is None:
        config.model.name = resolved_name(config.model.name)
        trust_name(config.model.name, remember=True)


def _layout_that_works(config: Config, model: nn.Module | None) -> list[str]:
    """channels_last, unless the model's forward views maps as NCHW (x.view(x.size(0), -1)): then the run
    falls back to NCHW, says so once, and its saved config records what ran."""
    if not config.train.channels_last or not views_break_channels_last(config, model):
        return []
    config.train.channels_last = False
    return [f"train.channels_last is off for {config.model.name}: its forward calls .view() on maps that "
            "channels_last lays out differently, so the run uses NCHW; write x.flatten(1) (or .reshape) "
            "there to train with channels_last"]


def _draw_curves(run_dir: Path) -> list[str]:
    """curves.png, the run at a glance; a failure to draw it is a warning, never a failed run."""
    try:
        write_curves([run_dir], run_dir / "curves.png")
    except Exception as exc:  # matplotlib and the file system fail in many ways; none matters to the run
        return [f"curves.png was not drawn ({one_line(exc)}); the run's numbers and checkpoints are complete — "
                f"try `cnnkit plot {run_dir}`"]
    return []


def _prepare(config: Config, data_root: str | None) -> Prepared:
    """The run's data; the statistics it resolves are written into the config (saved with the run)."""
    prepared = prepare_data(config, data_root)
    expected, actual = input_shape(config), tuple(prepared.train.images.shape[1:])
    if expected != actual:
        raise ConfigError(f"model input {'x'.join(map(str, expected))} does not match the data's images "
                          f"{'x'.join(map(str, actual))}; drop model.in_channels/model.input_size or fix them")
    config.data.mean, config.data.std = prepared.mean, prepared.std
    return prepared


def _init_images(config: Config, task: Task, prepared: Prepared) -> torch.Tensor:
    """The first training images as the model will see them, for a model's `init_from_data`."""
    images = prepared.train.images[: config.train.data_init_images]  # (N, C, H, W) uint8
    return task.inputs(images, prepared.mean, prepared.std)


def _start_event(run: Run, state: TrainState, inputs: TrainInputs, prepare_note: str) -> dict:
    p = run.prepared
    runtime = run.runtime.describe()
    if isinstance(inputs, EpochInputs):
        runtime += f", inputs prepared once an epoch{f' ({prepare_note})' if prepare_note else ''}"
    return {"kind": "start", "run_dir": str(run.run_dir), "runtime": runtime, "source": p.source,
            "model": run.config.model.name, "params": sum(t.numel() for t in state.model.parameters()),
            "train_n": len(p.train), "val_n": len(p.val) if p.val is not None else 0,
            "test_n": len(p.test) if p.test is not None else 0, "epochs": run.config.train.epochs,
            "start_epoch": state.start_epoch, "steps_per_epoch": state.steps_per_epoch,
            "world_size": distributed.world_size(), "setup_s": time.time() - run.wall_start,
            "init_from": run.config.train.init_from, "test_is_train": p.test is p.train,
            "warnings": run.runtime.warnings}


# ---------------------------------------------------------------------------------------- one epoch


def _run_epoch(run: Run, state: TrainState, epoch: int, inputs: TrainInputs, val: Split | None,
               test: Split | None, stop: StopFlag) -> None:
    """Train one epoch, measure it, select and save it, report it."""
    config, task = run.config, run.task
    try:
        row = train_one_epoch(state.train_model, state.optimizer, state.scheduler, inputs, task=task,
                              runtime=run.runtime, config=config, epoch=epoch, scaler=state.scaler, ema=state.ema,
                              stop=stop, report=run.report)
    except StopRequested:
        raise _interrupted(stop, epoch, run.run_dir) from None
    row = {"epoch": epoch + 1, **row, "lr": state.optimizer.param_groups[0]["lr"]}
    if val is not None:
        row.update(task.fields("val", run.evaluate(state.eval_model, val)))
    if test is not None and (config.train.test_every_epoch or val is None):
        row.update(task.fields("test", run.evaluate(state.eval_model, test)))
    row["time"] = time.time()
    row["elapsed_s"] = row["time"] - run.wall_start
    _check_finite(row, state.model, epoch + 1, state.optimizer)
    state.history.append(row)
    # Select on validation only; with no validation split the final epoch is the best one.
    score = task.selection_score(row) if val is not None else float(epoch + 1)
    improved = score > state.best["score"]
    if improved:
        state.best = {"score": score, "epoch": epoch + 1}
    if run.is_main:
        payload = state.payload(epoch + 1, config, run.prepared.classes, task)
        save_checkpoint(run.run_dir / "last.pt", payload)
        if improved:
            save_checkpoint(run.run_dir / "best.pt", payload)
        write_metrics(run.run_dir, state.history)
    run.report({"kind": "epoch", **row, "best": improved})


def _check_finite(row: dict, model: nn.Module, epoch: int, optimizer) -> None:
    """An epoch that ends with non-finite weights or losses must not become last.pt."""
    bad = [k for k in ("train_loss", "val_loss", "val_mse", "test_loss", "test_mse")
           if k in row and not math.isfinite(row[k])]
    if not weights_finite(model):
        bad.append("weights")
    if bad:
        raise TrainingError(f"{', '.join(bad)} became non-finite in epoch {epoch}; {kept(epoch)} — lower optim.lr "
                            f"(now {optimizer.param_groups[0]['lr']:.3g}) or set train.grad_clip")


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite: one flag per tensor reduced on the device, one host read
    (`all(...)` over the parameters would read each flag back, a sync per parameter)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]  # 0-d bools on the device
    return bool(torch.stack(flags).all()) if flags else True


def _final_test(run: Run, state: TrainState, test: Split | None) -> EvalResult | None:
    """The number to trust: best.pt (chosen without the test set) on the test set, once."""
    best = run.run_dir / "best.pt"
    if run.is_main:
        load_model_state(state.model, load_checkpoint(best)["model"], str(best))
    distributed.sync_state(state.model)
    if test is None:
        return None
    # Always fp32, as `cnnkit eval` does, so both print the same number for this checkpoint.
    return run.evaluate(state.model, test, dataclasses.replace(run.runtime, precision="fp32"))


def _final_entry(run: Run, result: FitResult) -> dict:
    """The run's final test figure as metrics.jsonl records it: best.pt on the test set in fp32 (what
    `train` printed last, `cnnkit eval` prints and `cnnkit runs` shows), and its TTA figure."""
    entry = {"checkpoint": "best.pt", "epoch": result.best_epoch, "precision": "fp32",
             **run.task.fields("test", result.test)}
    if result.tta is not None:
        entry.update(tta_mode=run.config.train.tta, tta_acc=result.tta.accuracy, tta_loss=result.tta.loss)
    entry.update({k: result.extra[k] for k in ("train_s", "warmup_s", "tta_s", "launch_to_report_s")
                  if k in result.extra})
    return entry


def _final_tta(run: Run, state: TrainState, test: Split) -> tuple[list[str], EvalResult]:
    """best.pt on the test set again, its outputs averaged over train.tta's views (as cnnkit eval --tta)."""
    views = tta_views(run.config.train.tta, run.config.data.pad_mode)
    fp32 = dataclasses.replace(run.runtime, precision="fp32")
    result = evaluate(state.model, test, task=run.task, runtime=fp32, batch_size=run.config.train.eval_batch_size,
                      mean=run.prepared.mean, std=run.prepared.std, num_classes=len(run.prepared.classes),
                      views=[v for v, _ in views.values()], weights=[w for _, w in views.values()])
    return list(views), result


# ---------------------------------------------------------------------------------------- signals


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set the yielded flag, which the loop checks between steps; handlers restored on exit."""
    stop = StopFlag()

    def handler(signum, frame):
        if stop.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user really wants out now
        stop.signum = signum

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a test runner thread): no handlers
            pass
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupted(stop: StopFlag, epoch: int, run_dir: Path) -> Interrupted:
    code = 130 if stop.signum == signal.SIGINT else 143
    name = "SIGINT" if code == 130 else "SIGTERM"
    last = run_dir / "last.pt"
    if last.exists():
        hint = f"resume with: cnnkit train --resume {last}"
    else:
        hint = "no epoch had finished, so there is nothing to resume; start the run again"
    return Interrupted(f"{name} during epoch {epoch + 1}: stopped without saving the unfinished epoch; {hint}", code)


# ---------------------------------------------------------------------------------------- resume

# What a resumed run may change: how long it trains and where, never what it trains. The precision
# is where too: an fp16 run (CUDA only) resumes on a CPU with --set train.precision=bf16 or fp32;
# the weights and optimiser state are fp32 either way, and a grad scaler is kept only under fp16.
# So are train.prepare (the same inputs either way) and train.compile (the same model, compiled).
RESUME_OVERRIDABLE = ("train.epochs", "train.device", "train.precision", "train.threads", "train.eval_batch_size",
                      "train.test_every_epoch", "train.prepare", "train.compile")


def resume_config(checkpoint: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, dict]:
    """The config a checkpoint was trained with, plus any --set (e.g. more epochs).

    A resume continues the same run on the same schedule, so anything that would silently change
    that schedule, or drop epochs the run already has, is refused with what to do instead.
    """
    payload = load_checkpoint(checkpoint)
    source = f"{checkpoint} (its saved config)"
    saved = config_from_dict(payload["config"], source)
    require_trusted(saved, checkpoint)
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--set {text}: {key} cannot change when resuming (the saved optimiser, schedule "
                              f"and data state depend on it); on --resume only {', '.join(RESUME_OVERRIDABLE)} "
                              "can be set — start a new run to change it")
    # Re-validate the saved config with the overrides on top, exactly as a YAML file's.
    config = apply_overrides(saved.to_dict(), overrides, source) if overrides else saved
    _check_resume_point(Path(checkpoint), payload)
    _check_schedule_kept(Path(checkpoint), saved, config, int(payload["epoch"]))
    return config, payload


def _check_resume_point(checkpoint: Path, payload: dict) -> None:
    """Resuming from an epoch the run has gone past (best.pt, say) would overwrite the later ones."""
    done = int(payload["epoch"])
    try:
        logged = len((checkpoint.parent / "metrics.jsonl").read_text().splitlines())
    except OSError:  # a checkpoint outside its run folder: nothing there to overwrite
        return
    if logged > done:
        raise CheckpointError(
            f"{checkpoint} holds epoch {done}, but its run went on to epoch {logged}; resuming from it would "
            f"discard epochs {done + 1}–{logged} — resume from {checkpoint.parent / 'last.pt'}, or start a "
            f"fine-tune from it in a new run: cnnkit train --config {checkpoint.parent / 'config.yaml'} "
            f"--init-from {checkpoint}")


def _check_schedule_kept(checkpoint: Path, saved: Config, config: Config, done: int) -> None:
    """A schedule planned over the whole run (one-cycle, cosine) cannot stretch to a new length."""
    name, before, after = saved.schedule.name, saved.train.epochs, config.train.epochs
    if name not in SCHEDULES_OVER_THE_RUN or (after == before and done < before):
        return
    fine_tune = (f"start a fine-tune with its own schedule: cnnkit train --config {checkpoint.parent / 'config.yaml'} "
                 f"--init-from {checkpoint} --set train.epochs=N")
    if after == before:  # finished, and no new length asked for
        raise ConfigError(f"{checkpoint}: this run finished its {before}-epoch {name} schedule; to train further, "
                          f"{fine_tune}")
    state = "has finished" if done >= before else f"is at epoch {done}"
    again = "" if done >= before else f"continue it as it is with --resume {checkpoint}, or "
    raise ConfigError(
        f"--set train.epochs={after}: this run's {name} schedule was planned over {before} epochs and {state}; "
        f"a new length would reshape it mid-run (the lr would jump back up) — {again}{fine_tune}")
