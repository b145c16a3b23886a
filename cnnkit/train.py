"""Training and evaluation: plain functions, as in torchvision's reference train.py.

`train_one_epoch` and `evaluate` work on uint8 tensors already on the device (airbench style):
every batch is an index into them, augmented and normalised as a whole batch. `fit` wires config,
data, model, optimiser, schedule, run folder and checkpoints together. Nothing here prints: `fit`
hands progress events to a `report` function, and the CLI renders them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import distributed
from cnnkit.build import input_shape, model_from_config
from cnnkit.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from cnnkit.config import Config, config_from_dict, load_config, parse_override
from cnnkit.curves import write_curves
from cnnkit.data import Prepared, Split, augment_batch, epoch_permutation, prepare_data, to_device
from cnnkit.device import Runtime, setup_runtime
from cnnkit.ema import WeightEMA
from cnnkit.errors import ConfigError, Interrupted, RunError, TrainingError
from cnnkit.evaluate import evaluate
from cnnkit.fileio import atomic_write_text
from cnnkit.metrics import EvalResult
from cnnkit.optim import build_optimizer, build_scheduler
from cnnkit.tasks import Task, task_for

Report = Callable[[dict[str, Any]], None]

# The edge toy learns this kernel: a horizontal difference, +1 then −1 (seed 000).
EDGE_KERNEL = torch.tensor([[1.0, -1.0]])


# ---------------------------------------------------------------------------------------- the loops


class _StopRequested(Exception):
    pass


@dataclass
class StopFlag:
    """Set by a signal handler; the loop checks it between steps so no step is left half-done."""

    signum: int | None = None


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches of indices, the same on every rank and after a resume.

    The last incomplete batch is dropped when there is at least one full batch, so every step
    averages the same number of images (and DDP ranks get equal shares).
    """
    order = epoch_permutation(n, seed, epoch)  # (n,)
    steps = n // batch_size if n >= batch_size else 1
    return [order[i * batch_size: (i + 1) * batch_size] for i in range(steps)]


def train_one_epoch(model: nn.Module, optimizer, scheduler, split: Split, *, task: Task, runtime: Runtime,
                    config: Config, epoch: int, mean: list[float], std: list[float], scaler=None,
                    ema: WeightEMA | None = None, stop: StopFlag | None = None,
                    report: Report | None = None) -> dict[str, float]:
    model.train()
    train_cfg, data_cfg = config.train, config.data
    rank, world = distributed.rank(), distributed.world_size()
    batches = global_batches(len(split), train_cfg.batch_size, train_cfg.seed, epoch)
    # Augmentation draws from its own generator seeded by (seed, epoch): resumable and rank-independent.
    aug_gen = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + epoch)
    augment = data_cfg.augment and task.augments
    loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    correct = torch.zeros((), device=runtime.device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    for step, global_idx in enumerate(batches):
        if stop is not None and stop.signum is not None:
            raise _StopRequested()
        idx = global_idx.to(runtime.device, non_blocking=True)
        images = split.images[idx]  # (B, C, H, W) uint8
        if augment:
            # Every rank augments the whole global batch with the same draws, then keeps its share:
            # the result is the same as one process, whatever the world size.
            images = augment_batch(images, crop_padding=data_cfg.crop_padding, hflip=data_cfg.hflip,
                                   generator=aug_gen)
        images, labels = distributed.shard(images), distributed.shard(split.labels[idx])
        inputs = task.inputs(images, mean, std).contiguous(memory_format=runtime.memory_format)  # (b, C, H, W)
        targets = task.targets(inputs, labels)
        with runtime.autocast():
            outputs = model(inputs)
            loss = task.loss(outputs.float(), targets, train_cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}/{len(batches)}; "
                f"{_kept(epoch + 1)} — lower optim.lr (now {optimizer.param_groups[0]['lr']:.3g}) "
                "or set train.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if train_cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        batch = labels.shape[0]
        loss_sum += loss.detach().double() * batch
        correct += task.hits(outputs, labels)
        seen += batch
        if report is not None and rank == 0:
            report({"kind": "step", "epoch": epoch + 1, "step": step + 1, "steps": len(batches),
                    "loss": float(loss.detach())})
    seconds = time.perf_counter() - start
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                                     torch.tensor(float(seen), device=loss_sum.device,
                                                                  dtype=torch.float64)]))
    n = max(1.0, totals[2].item())
    result = {"train_loss": totals[0].item() / n, "epoch_s": seconds, "images_per_s": n / seconds}
    result.update(task.train_fields(totals[1].item() / n))
    del world
    return result


# ---------------------------------------------------------------------------------------- run folders


def new_run_dir(config: Config, name: str | None, overwrite: bool) -> Path:
    base = Path(config.output.dir).expanduser()
    stem = name or f"{config.output.name or config.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = base / stem
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunError(f"{run_dir}: a run with this name exists; pass --overwrite to replace it, "
                       f"--name for a new one, or --resume {run_dir / 'last.pt'} to continue it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc}); "
                       "set output.dir to a writable folder") from None
    if overwrite:
        for stale in ("metrics.jsonl", "last.pt", "best.pt", "curves.png", "confusion.png", "edges.png"):
            (run_dir / stale).unlink(missing_ok=True)
    return run_dir


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    # Rewritten whole each epoch (it is small) so a kill never leaves half a line.
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


# ---------------------------------------------------------------------------------------- fit


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


# What a resumed run may change: how long it trains and where, never what it trains.
RESUME_OVERRIDABLE = ("train.epochs", "train.device", "train.threads", "train.eval_batch_size",
                      "train.test_every_epoch")


def resume_config(checkpoint: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, dict]:
    """The config a checkpoint was trained with, plus any --set (e.g. more epochs)."""
    payload = load_checkpoint(checkpoint)
    config = config_from_dict(payload["config"], f"{checkpoint} (its saved config)")
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--set {text}: {key} cannot change when resuming (the saved optimiser, schedule "
                              f"and data state depend on it); on --resume only {', '.join(RESUME_OVERRIDABLE)} "
                              "can be set — start a new run to change it")
    if overrides:
        # Re-validate the saved config with the overrides on top, exactly like a YAML file.
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "config.yaml"
            saved.write_text(config.to_yaml())
            config = load_config(saved, overrides)
            config.output.name = payload["config"]["output"]["name"]
    return config, payload


def _install_signal_handlers(stop: StopFlag) -> dict:
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
    return previous


def _model_input_check(config: Config, prepared: Prepared) -> None:
    expected = input_shape(config)
    actual = tuple(prepared.train.images.shape[1:])
    if expected != actual:
        raise ConfigError(f"model input {'x'.join(map(str, expected))} does not match the data's images "
                          f"{'x'.join(map(str, actual))}; drop model.in_channels/model.input_size or fix them")


def fit(config: Config, *, data_root: str | None = None, run_name: str | None = None, overwrite: bool = False,
        resume: str | Path | None = None, resume_payload: dict | None = None,
        report: Report = lambda event: None) -> FitResult:
    """Train `config` to the end, writing a run folder; return the history and the test result."""
    wall_start = time.time()
    dist = distributed.setup(config.train.device)
    runtime = setup_runtime(dist.device_spec, config.train.precision, config.train.threads,
                            config.train.channels_last, config.train.deterministic)
    is_main = distributed.rank() == 0
    if not is_main:
        report = lambda event: None  # noqa: E731  (only rank 0 talks)
    distributed.check_batch(config.train.batch_size)
    task = task_for(config)

    # The first optimiser imports torch._dynamo (~1 s); do that while the data loads.
    threading.Thread(target=importlib.import_module, args=("torch._dynamo",), daemon=True).start()
    prepared = prepare_data(config, data_root)
    _model_input_check(config, prepared)
    config.data.mean, config.data.std = prepared.mean, prepared.std  # resolved: saved with the run
    num_classes = len(prepared.classes)

    if resume is not None:
        payload = resume_payload or load_checkpoint(resume)
        run_dir = Path(resume).parent
    else:
        payload = None
        run_dir = new_run_dir(config, run_name, overwrite) if is_main else Path(config.output.dir)
    run_dir = distributed.broadcast_path(run_dir)

    torch.manual_seed(config.train.seed)
    model = model_from_config(config, num_classes)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config.optim.name, config.optim.lr, config.optim.weight_decay,
                                config.optim.kwargs)
    steps_per_epoch = len(global_batches(len(prepared.train), config.train.batch_size, 0, 0))
    scheduler = build_scheduler(optimizer, config.schedule.name, steps_per_epoch * config.train.epochs,
                                round(config.schedule.warmup_epochs * steps_per_epoch),
                                config.schedule.final_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if runtime.precision == "fp16" else None

    history: list[dict] = []
    start_epoch = 0
    best = {"score": -math.inf, "epoch": 0}
    if payload is not None:
        # With an EMA, `model` holds the average and `train_model` the weights the optimiser steps.
        load_model_state(model, payload.get("train_model", payload["model"]), str(resume))
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"]["torch"])
        history = list(payload["metrics"])
        start_epoch = int(payload["epoch"])
        best = dict(payload["best"])
        if start_epoch >= config.train.epochs:
            raise ConfigError(f"{resume}: this run already finished {start_epoch} epochs; "
                              f"raise train.epochs with --set train.epochs=N to train further")

    ema = None
    if config.train.ema_decay is not None:
        ema = WeightEMA(model, config.train.ema_decay, updates=int(payload.get("ema_updates", 0)) if payload else 0)
        if payload is not None and "train_model" in payload:
            load_model_state(ema.module, payload["model"], str(resume))
    train_model = distributed.wrap(model, runtime)
    if config.train.compile:
        train_model = torch.compile(train_model)

    if is_main:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    train_split = to_device(prepared.train, runtime.device)
    val_split = to_device(prepared.val, runtime.device)
    test_split = to_device(prepared.test, runtime.device)
    report({"kind": "start", "run_dir": str(run_dir), "runtime": runtime.describe(), "source": prepared.source,
            "model": config.model.name, "params": sum(p.numel() for p in model.parameters()),
            "train_n": len(prepared.train), "val_n": len(prepared.val) if prepared.val is not None else 0,
            "test_n": len(prepared.test) if prepared.test is not None else 0, "epochs": config.train.epochs,
            "start_epoch": start_epoch, "steps_per_epoch": steps_per_epoch, "world_size": distributed.world_size(),
            "setup_s": time.time() - wall_start})

    # The weights to judge (and save as `model`): the average when there is one.
    eval_model = ema.module if ema is not None else train_model

    def evaluate_split(split: Split) -> EvalResult:
        return evaluate(eval_model, split, task=task, runtime=runtime, batch_size=config.train.eval_batch_size,
                        mean=prepared.mean, std=prepared.std, num_classes=num_classes)

    def checkpoint_payload(epoch_done: int) -> dict:
        def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu() for k, v in module.state_dict().items()}

        averaged = {"train_model": cpu_state(model), "ema_updates": ema.updates} if ema is not None else {}
        return {
            "model": cpu_state(ema.module if ema is not None else model), **averaged,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch_done, "config": config.to_dict(), "classes": prepared.classes,
            "metrics": history, "best": best, "task": task.name,
            "rng": {"torch": torch.get_rng_state()},
        }

    stop = StopFlag()
    previous_handlers = _install_signal_handlers(stop)
    try:
        for epoch in range(start_epoch, config.train.epochs):
            try:
                row = train_one_epoch(train_model, optimizer, scheduler, train_split, task=task, runtime=runtime,
                                      config=config, epoch=epoch, mean=prepared.mean, std=prepared.std,
                                      scaler=scaler, ema=ema, stop=stop, report=report)
            except _StopRequested:
                code = 130 if stop.signum == signal.SIGINT else 143
                name = "SIGINT" if code == 130 else "SIGTERM"
                last = run_dir / "last.pt"
                if last.exists():
                    hint = f"resume with: cnnkit train --resume {last}"
                else:
                    hint = "no epoch had finished, so there is nothing to resume; start the run again"
                raise Interrupted(f"{name} during epoch {epoch + 1}: stopped without saving the unfinished epoch; "
                                  f"{hint}", code) from None
            row = {"epoch": epoch + 1, **row, "lr": optimizer.param_groups[0]["lr"]}
            if val_split is not None:
                val = evaluate_split(val_split)
                row.update(task.fields("val", val))
            if test_split is not None and (config.train.test_every_epoch or val_split is None):
                row.update(task.fields("test", evaluate_split(test_split)))
            row["time"] = time.time()
            row["elapsed_s"] = row["time"] - wall_start
            _check_finite(row, model, epoch + 1, optimizer)
            history.append(row)
            # Select on validation only; with no validation split the final epoch is the best one.
            score = task.selection_score(row) if val_split is not None else float(epoch + 1)
            improved = score > best["score"]
            if improved:
                best = {"score": score, "epoch": epoch + 1}
            if is_main:
                payload_now = checkpoint_payload(epoch + 1)
                save_checkpoint(run_dir / "last.pt", payload_now)
                if improved:
                    save_checkpoint(run_dir / "best.pt", payload_now)
                write_metrics(run_dir, history)
            report({"kind": "epoch", **row, "best": improved})
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    if is_main:
        write_curves([run_dir], run_dir / "curves.png")  # the run at a glance

    # The number to trust: best.pt (chosen without the test set) on the test set, once.
    best_payload = load_checkpoint(run_dir / "best.pt") if is_main else None
    test_result = None
    if best_payload is not None:
        load_model_state(model, best_payload["model"], str(run_dir / "best.pt"))
    distributed.sync_state(model)
    if test_split is not None:
        # Always fp32, as `cnnkit eval` does, so both print the same number for this checkpoint.
        fp32 = dataclasses.replace(runtime, precision="fp32")
        test_result = evaluate(model, test_split, task=task, runtime=fp32, batch_size=config.train.eval_batch_size,
                               mean=prepared.mean, std=prepared.std, num_classes=num_classes)
    result = FitResult(run_dir, history, best["epoch"], test_result, prepared.classes, task,
                       task.learned_kernel(model), {"wall_s": time.time() - wall_start})
    report({"kind": "end", "result": result})
    distributed.teardown()
    return result


def _kept(epoch: int) -> str:
    return f"the last good checkpoint (epoch {epoch - 1}) is kept" if epoch > 1 else "no checkpoint was saved"


def _check_finite(row: dict, model: nn.Module, epoch: int, optimizer) -> None:
    """An epoch that ends with non-finite weights or losses must not become last.pt."""
    bad = [k for k in ("train_loss", "val_loss", "val_mse", "test_loss", "test_mse")
           if k in row and not math.isfinite(row[k])]
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        bad.append("weights")
    if bad:
        raise TrainingError(f"{', '.join(bad)} became non-finite in epoch {epoch}; {_kept(epoch)} — lower optim.lr "
                            f"(now {optimizer.param_groups[0]['lr']:.3g}) or set train.grad_clip")
