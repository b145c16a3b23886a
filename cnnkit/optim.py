"""Registries for optimisers and learning-rate schedules. Configs name an entry and pass kwargs."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from cnnkit.errors import ConfigError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def build_optimizer(params, name: str, lr: float, weight_decay: float, kwargs: dict) -> torch.optim.Optimizer:
    cls = OPTIMIZERS[name]
    accepted = set(inspect.signature(cls).parameters) - {"params", "lr", "weight_decay"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        useful = sorted(accepted - {"foreach", "capturable", "differentiable", "fused", "maximize"})
        raise ConfigError(f"optim.kwargs: {', '.join(unknown)} not accepted by {name}; it takes: {', '.join(useful)}")
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"optim.kwargs: {exc}") from None


# A schedule maps progress to a multiplier of the base lr. Arguments: the step (0-based), the total
# number of steps, the warm-up steps, and the final lr as a fraction of the peak.
ScheduleFn = Callable[[int, int, int, float], float]


def _warmup(step: int, warmup: int) -> float | None:
    # Linear warm-up from 1/warmup to 1: Adam's early steps on a fresh net are the unstable ones.
    return (step + 1) / warmup if step < warmup else None


def constant(step: int, total: int, warmup: int, final: float) -> float:
    w = _warmup(step, warmup)
    return 1.0 if w is None else w


def cosine(step: int, total: int, warmup: int, final: float) -> float:
    w = _warmup(step, warmup)
    if w is not None:
        return w
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def onecycle(step: int, total: int, warmup: int, final: float) -> float:
    # Linear up to the peak, then linear down to `final`: simple, and resumable from the step alone.
    w = _warmup(step, warmup)
    if w is not None:
        return w
    progress = (step - warmup) / max(1, total - warmup)
    return 1 - (1 - final) * min(1.0, progress)


SCHEDULES: dict[str, ScheduleFn] = {"constant": constant, "cosine": cosine, "onecycle": onecycle}


def build_scheduler(optimizer, name: str, total_steps: int, warmup_steps: int, final_lr_ratio: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    fn = SCHEDULES[name]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: fn(step, total_steps, warmup_steps, final_lr_ratio))
