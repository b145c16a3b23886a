"""Registries for optimisers and learning-rate schedules. Configs name an entry and pass kwargs.

A config may give some parameters optimisers of their own (`optim.groups`): e.g. the conv filters
to Muon, the norm biases and the head to SGD, each with its lr, weight decay and schedule length.
Each group is its own torch optimiser; `OptimizerSet` steps them together and `ScheduleSet` moves
their learning rates, so the loop sees one optimiser and one schedule either way.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.optim.muon import Muon

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "muon": Muon,
}


def build_optimizer(params, name: str, lr: float, weight_decay: float, kwargs: dict,
                    where: str = "optim") -> torch.optim.Optimizer:
    cls = OPTIMIZERS[name]
    accepted = set(inspect.signature(cls).parameters) - {"params", "lr", "weight_decay"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        useful = sorted(accepted - {"foreach", "capturable", "differentiable", "fused", "maximize"})
        # Typically kwargs written for another optimiser (lenet.yaml's Adam betas under --set optim.name=sgd).
        raise ConfigError(f"{where}.kwargs: {', '.join(unknown)} not accepted by {name}; it takes: {', '.join(useful)} "
                          f"(to drop the config's: --set {where}.kwargs={{}})")
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}.kwargs: {exc}") from None


# ---------------------------------------------------------------------------------------- groups


@dataclass
class GroupPlan:
    """One optimiser's share of the parameters, as the config asks for it."""

    where: str  # "optim" or "optim.groups.i" (the --set key), for error messages
    name: str
    lr: float
    weight_decay: float
    kwargs: dict
    schedule_epochs: float | None
    params: list[nn.Parameter]


def plan_groups(model: nn.Module, optim, batch_size: int) -> list[GroupPlan]:
    """Each trainable parameter to the first `optim.groups` entry that matches its name, the rest to
    `optim` itself. A group that matches nothing is an error: its patterns are surely mistyped."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plans = [GroupPlan(f"optim.groups.{i}", g.name, g.lr * (batch_size if g.lr_per_image else 1), g.weight_decay,
                       g.kwargs, g.schedule_epochs, [])
             for i, g in enumerate(optim.groups)]
    rest = GroupPlan("optim", optim.name, optim.lr, optim.weight_decay, optim.kwargs, None, [])
    for name, param in named:
        index = next((i for i, g in enumerate(optim.groups)
                      if any(fnmatch.fnmatchcase(name, pattern) for pattern in g.params)), None)
        (plans[index] if index is not None else rest).params.append(param)
    for plan, group in zip(plans, optim.groups, strict=True):
        if not plan.params:
            sample = ", ".join(n for n, _ in named[:4])
            raise ConfigError(f"{plan.where}.params: {group.params} match no trainable parameter; "
                              f"names look like: {sample}, ... (see `cnnkit shapes --model NAME`)")
    return [p for p in [*plans, rest] if p.params]


class OptimizerSet:
    """Several optimisers stepped as one. With a single one, its state_dict is saved as it is (so
    checkpoints from before groups existed still load).

    Under fp16 the set steps through a grad scaler as one optimiser would: every optimiser's
    gradients are unscaled, one check over all of them decides, and then all of them step or none
    does. torch's `GradScaler.step(opt)` per optimiser would read its own inf flag back to the host
    (one sync each), take each decision alone, and assert on an optimiser with no gradients at all
    (a group whose schedule has ended and was frozen, see ScheduleSet.freeze_finished).
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self._unscaled = False  # unscale_ ran since the last step

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def unscale_(self, scaler: torch.amp.GradScaler) -> None:
        """Divide every gradient by the loss scale, noting (on the device) whether any is inf/NaN.
        An optimiser without gradients records nothing, which is fine: it has nothing to step."""
        for opt in self.optimizers:
            scaler.unscale_(opt)
        self._unscaled = True

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Step every optimiser; with an enabled grad scaler, all of them only if no gradient overflowed.

        The caller still calls `scaler.update()` once afterwards: it reads the same inf flags (on the
        device) and halves the scale after an overflow, or grows it after a run of good steps.
        """
        if scaler is not None and scaler.is_enabled():
            if not self._unscaled:
                self.unscale_(scaler)
            self._unscaled = False
            if self._overflowed(scaler):  # fp16's one host read per step: whether to step at all
                return
        for opt in self.optimizers:
            opt.step()

    def _overflowed(self, scaler: torch.amp.GradScaler) -> bool:
        # The flags unscale_ left per optimiser and device (GradScaler keeps them until update());
        # moved to one device and summed there, so the host waits once for the whole set.
        flags = [flag for opt in self.optimizers for flag in scaler._found_inf_per_device(opt).values()]
        if not flags:
            return False  # no gradients anywhere: nothing would step anyway
        device = flags[0].device
        return bool(torch.stack([f.to(device, non_blocking=True) for f in flags]).sum())  # (k,) → one read

    def state_dict(self) -> dict:
        if len(self.optimizers) == 1:
            return self.optimizers[0].state_dict()
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state["optimizers"] if "optimizers" in state else [state]
        if len(states) != len(self.optimizers):
            raise ConfigError(f"the checkpoint holds {len(states)} optimiser(s) and the config makes "
                              f"{len(self.optimizers)}; resume with the config it was trained with")
        for opt, saved in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(saved)


def build_optimizers(model: nn.Module, optim, batch_size: int) -> tuple[OptimizerSet, list[GroupPlan]]:
    plans = plan_groups(model, optim, batch_size)
    return OptimizerSet([build_optimizer(p.params, p.name, p.lr, p.weight_decay, p.kwargs, p.where)
                         for p in plans]), plans


# ---------------------------------------------------------------------------------------- schedules

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
# Schedules shaped by the run's total length: a resume cannot change train.epochs under them.
SCHEDULES_OVER_THE_RUN = frozenset({"cosine", "onecycle"})


def build_scheduler(optimizer, name: str, total_steps: int, warmup_steps: int, final_lr_ratio: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    fn = SCHEDULES[name]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: fn(step, total_steps, warmup_steps, final_lr_ratio))


class ScheduleSet:
    """One LambdaLR per optimiser of an OptimizerSet, stepped together (state saved like OptimizerSet's)."""

    def __init__(self, schedulers: list[torch.optim.lr_scheduler.LambdaLR], horizons: list[int] | None = None,
                 final_lr_ratio: float = 1.0):
        self.schedulers = schedulers
        self.horizons = horizons or [math.inf] * len(schedulers)  # the step each schedule ends at
        self.final_lr_ratio = final_lr_ratio

    def freeze_finished(self) -> None:
        """Stop computing gradients for groups whose schedule has ended at lr 0 (e.g. fast's whitening
        bias after 3 epochs): they can never move again, and their gradient is what makes the backward
        pass reach back through the first, largest layers. The weights are exactly the same."""
        if self.final_lr_ratio != 0:
            return
        for scheduler, horizon in zip(self.schedulers, self.horizons, strict=True):
            if scheduler.last_epoch >= horizon:
                for group in scheduler.optimizer.param_groups:
                    for param in group["params"]:
                        param.requires_grad_(False)

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> dict:
        if len(self.schedulers) == 1:
            return self.schedulers[0].state_dict()
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        states = state["schedulers"] if "schedulers" in state else [state]
        for scheduler, saved in zip(self.schedulers, states, strict=True):
            scheduler.load_state_dict(saved)


def build_schedules(optimizers: OptimizerSet, plans: list[GroupPlan], schedule, steps_per_epoch: int,
                    epochs: int) -> ScheduleSet:
    """The configured schedule for every group, over the run or over the group's `schedule_epochs`."""
    warmup = round(schedule.warmup_epochs * steps_per_epoch)
    schedulers, horizons = [], []
    for opt, plan in zip(optimizers.optimizers, plans, strict=True):
        total = round((plan.schedule_epochs or epochs) * steps_per_epoch)
        schedulers.append(build_scheduler(opt, schedule.name, total, min(warmup, total), schedule.final_lr_ratio))
        # Only a group that stops early is ever frozen: the others end with the run.
        horizons.append(total if plan.schedule_epochs is not None and schedule.name != "constant" else math.inf)
    return ScheduleSet(schedulers, horizons, schedule.final_lr_ratio)
