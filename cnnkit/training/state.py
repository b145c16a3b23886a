"""The training state: model, optimiser, schedule, grad scaler and EMA; built, restored, saved.

Everything an epoch changes lives in one `TrainState`, so a checkpoint is that state as plain
tensors and a resume is the same construction followed by `restore`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnkit.build import model_from_config
from cnnkit.config import Config
from cnnkit.device import Runtime
from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.optim.registry import OptimizerSet, ScheduleSet, build_optimizers, build_schedules
from cnnkit.tasks import Task
from cnnkit.training import distributed
from cnnkit.training.checkpoint import load_checkpoint, load_model_state
from cnnkit.training.ema import WeightEMA
from cnnkit.training.loop import global_batches


@dataclass
class TrainState:
    model: nn.Module  # the weights the optimiser steps, unwrapped
    train_model: nn.Module  # `model` as the loop calls it: DDP-wrapped and/or compiled when configured
    optimizer: OptimizerSet
    scheduler: ScheduleSet
    scaler: torch.amp.GradScaler | None
    ema: WeightEMA | None
    steps_per_epoch: int
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch
    start_epoch: int = 0  # epochs already finished (a resumed run starts after them)
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": 0})  # the epoch best.pt holds

    @property
    def eval_model(self) -> nn.Module:
        """The weights to judge (and save as `model`): the average when there is one.

        Never the DDP wrapper: its forward broadcasts buffers from rank 0, and evaluation is
        sharded, so ranks past the last batch would leave rank 0's broadcast waiting for them.
        Never the compiled model either: each eval batch size would be one more compile (~10 s
        each on the CPU), for a pass that is a small part of an epoch.
        """
        return self.ema.module if self.ema is not None else self.model

    def payload(self, epoch_done: int, config: Config, classes: list[str], task: Task) -> dict:
        """The checkpoint: everything needed to evaluate the model and to resume training bit for bit."""
        model, ema = self.model, self.ema
        averaged = {"train_model": _cpu_state(model), "ema_updates": ema.updates} if ema is not None else {}
        return {
            "model": _cpu_state(ema.module if ema is not None else model), **averaged,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch_done, "config": config.to_dict(), "classes": classes,
            "metrics": self.history, "best": self.best, "task": task.name,
            "rng": _rng_state(),
        }


def _rng_state() -> dict:
    """The CPU generator, and every CUDA device's when CUDA is in use (dropout draws there)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()  # [(S,) uint8] one per device
    return rng


def _restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available():
        # A machine with fewer GPUs than the one that saved gets the first devices' states.
        for device, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def build_state(config: Config, runtime: Runtime, num_classes: int, n_train: int,
                payload: dict | None = None, source: str = "", init_images: torch.Tensor | None = None,
                model: nn.Module | None = None) -> TrainState:
    """A fresh state from `config` (seeded), or, with a checkpoint `payload`, the one it saved.

    `init_images` (normalised training images) go to the model's `init_from_data`, if it has one
    (e.g. the fast model's whitening conv), before a fresh run's first step. `model`, a model object the
    caller built, is used instead of building one (its initial weights are the caller's, not train.seed's).
    """
    train = config.train
    torch.manual_seed(train.seed)
    model = model if model is not None else model_from_config(config, num_classes)
    init_from_data = getattr(model, "init_from_data", None)
    if payload is None and train.init_from is not None:
        # A fine-tune: its weights, this config's fresh schedule (and a fresh head for other classes).
        runtime.warnings += _init_weights(model, train.init_from, num_classes)
    elif payload is None and init_from_data is not None and init_images is not None:
        init_from_data(init_images)
    if use_sync_bn(train.sync_bn, model):
        model = distributed.convert_sync_batchnorm(model)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    optimizer, plans = build_optimizers(model, config.optim, train.batch_size)
    steps_per_epoch = len(global_batches(n_train, train.batch_size, 0, 0))
    scheduler = build_schedules(optimizer, plans, config.schedule, steps_per_epoch, train.epochs)
    scaler = torch.amp.GradScaler("cuda") if runtime.precision == "fp16" else None
    state = TrainState(model, model, optimizer, scheduler, scaler, None, steps_per_epoch)
    if payload is not None:
        restore(state, payload, source, train.epochs)
    if train.ema_decay:  # 0 and None both mean no average
        state.ema = WeightEMA(model, train.ema_decay, updates=int(payload.get("ema_updates", 0)) if payload else 0)
        if payload is not None and "train_model" in payload:
            load_model_state(state.ema.module, payload["model"], source)
    state.train_model = distributed.wrap(model, runtime)
    if train.compile:
        mode = None if train.compile is True else train.compile  # None: torch's default mode
        state.train_model = torch.compile(state.train_model, mode=mode)
    return state


def restore(state: TrainState, payload: dict, source: str, epochs: int) -> None:
    """Load a checkpoint's weights, optimiser, schedule, scaler, RNG and history into `state`."""
    # With an EMA, `model` holds the average and `train_model` the weights the optimiser steps.
    load_model_state(state.model, payload.get("train_model", payload["model"]), source)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    if state.scaler is not None and payload.get("scaler"):
        state.scaler.load_state_dict(payload["scaler"])
    _restore_rng(payload["rng"])
    state.history = list(payload["metrics"])
    state.start_epoch = int(payload["epoch"])
    state.best = dict(payload["best"])
    if state.start_epoch >= epochs:
        raise ConfigError(f"{source}: this run already finished {state.start_epoch} epochs; "
                          f"raise train.epochs with --set train.epochs=N to train further")


def _init_weights(model: nn.Module, path: str, num_classes: int) -> list[str]:
    """Load a checkpoint's evaluated weights (`model`: the average, with an EMA) for a fine-tune; the
    notes to show when the run starts.

    A checkpoint trained on another number of classes (CIFAR-10 weights for CIFAR-100, as timm's
    `num_classes` and fastai's new head do) gives every tensor but those whose shape differs only by
    the class count: those keep the fresh initialisation. Every other tensor must fit exactly."""
    payload = load_checkpoint(path)
    weights = payload["model"]
    trained_classes = len(payload.get("classes") or [])
    fresh = []
    if trained_classes and trained_classes != num_classes:
        own = model.state_dict()
        fresh = [k for k, v in weights.items()
                 if k in own and _differs_by_class_count(v.shape, own[k].shape, trained_classes, num_classes)]
        weights = {**weights, **{k: own[k] for k in fresh}}
    try:
        load_model_state(model, weights, path)
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from: {exc}") from None
    if not fresh:
        return []
    return [f"train.init_from: {', '.join(fresh)} start fresh (the checkpoint has {trained_classes} classes, this "
            f"run {num_classes}); every other tensor comes from {path}"]


def _differs_by_class_count(trained: torch.Size, wanted: torch.Size, trained_classes: int, classes: int) -> bool:
    """Whether two shapes are the same but where the trained one has `trained_classes` and the wanted
    one `classes` (a classifier's weight (K, D) or bias (K,))."""
    if len(trained) != len(wanted) or trained == wanted:
        return False
    return all(a == b or (a == trained_classes and b == classes) for a, b in zip(trained, wanted, strict=True))


def use_sync_bn(setting: bool | None, model: nn.Module) -> bool:
    """Whether BatchNorm should normalise over the global batch: only under DDP, only with BatchNorm."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not (distributed.is_distributed() and has_bn):
        return False
    return True if setting is None else setting
