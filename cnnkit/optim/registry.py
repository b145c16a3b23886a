"""Registries for optimisers and learning-rate schedules. Configs name an entry and pass kwargs.

A config may give some parameters optimisers of their own (`optim.groups`): e.g. the conv filters
to Muon, the norm biases and the head to SGD, each with its lr, weight decay and schedule length.
Groups naming the same optimiser share one torch optimiser, a param group each (the arithmetic is
per group either way, and one step call runs torch's foreach or fused kernels over all of them);
`OptimizerSet` steps the optimisers together and `ScheduleSet` moves every group's learning rate,
so the loop sees one optimiser and one schedule either way. Checkpoints hold one state per config
group, as when each group had an optimiser of its own.
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


# Optimisers whose every setting is per param group (their step loops over the groups, each with its
# own lr, momentum, weight decay...), so config groups naming the same one can share one instance,
# a param group each, with the same arithmetic. Not every torch optimiser can (LBFGS takes one group).
SHAREABLE = frozenset({"adam", "adamw", "sgd", "muon"})


# Settings that choose how torch computes a step, not what it computes.
KERNEL_KEYS = ("foreach", "fused")


def kernel_choice(name: str, device: torch.device) -> dict:
    """How torch should run an optimiser's arithmetic on `device`, when the config does not say.

    SGD: fused on CUDA (one kernel per param group for the whole update, where foreach takes ~4);
    foreach elsewhere. Not fused on the CPU, though torch has the kernel: it rounds plain momentum
    differently (measured: 1 ulp from the per-tensor loop after 20 steps; Nesterov's matched),
    while the CPU's foreach ops are the per-tensor loop's own kernels, so the weights are
    bit-identical to separate optimisers' (tests/test_optim_paths.py). Nor is the time worth it
    there: fast.yaml's three SGD groups took 0.26 ms a step as three optimisers, 0.23 shared with
    foreach, 0.11 fused, in a step of ~1 s (`scripts/bench_optim.py --threads 1`, the 2-core Xeon).
    """
    if name != "sgd":
        return {}
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def merge_optimizers(optimizers: list[torch.optim.Optimizer], names: list[str]
                     ) -> tuple[list[torch.optim.Optimizer], list[tuple[int, int]]]:
    """One optimiser per SHAREABLE name, holding those optimisers' param groups in config order;
    the others kept as they are. Returns the optimisers and, for each one given, where its group
    went: (optimiser index, param group index).

    Each given optimiser was built (and its kwargs checked) from one config group, so its param
    group carries every setting, all filled in; the shared one is built from those groups.
    """
    members: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        members.setdefault(name if name in SHAREABLE else f"#{i}", []).append(i)
    merged, slots = [], [(0, 0)] * len(optimizers)
    for name, indices in members.items():
        if name in SHAREABLE:
            groups = [dict(g) for i in indices for g in optimizers[i].param_groups]
            fast = kernel_choice(name, groups[0]["params"][0].device)
            if any(g.get(key) is not None for g in groups for key in KERNEL_KEYS):
                fast = {}  # the config chose the kernels
            for group in groups:
                group.update(fast)  # the constructor's defaults would not replace a group's own None
            opt = type(optimizers[indices[0]])(groups, **fast)
        else:
            (opt,) = (optimizers[i] for i in indices)
        for j, i in enumerate(indices):
            slots[i] = (len(merged), j)
        merged.append(opt)
    return merged, slots


class OptimizerSet:
    """Several optimisers stepped as one, e.g. Muon for the filters and one SGD holding the other
    config groups as its param groups (merge_optimizers).

    Checkpoints keep one optimiser state per config group, in config order, as when each group had an
    optimiser of its own (`slots` says where each group now lives): so checkpoints saved before the
    groups shared optimisers still load, bit for bit, and any checkpoint reads the same whatever the
    sharing. With a single group its state_dict is saved as it is (so checkpoints from before groups
    existed still load).

    Under fp16 the set steps through a grad scaler as one optimiser would: every optimiser's
    gradients are unscaled, one check over all of them decides, and then all of them step or none
    does. torch's `GradScaler.step(opt)` per optimiser would read its own inf flag back to the host
    (one sync each), take each decision alone, and assert on an optimiser with no gradients at all
    (a group whose schedule has ended and was frozen, see ScheduleSet.freeze_finished).
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], slots: list[tuple[int, int]] | None = None):
        self.optimizers = optimizers
        # (optimiser, param group) of each config group, in config order; by default every param group.
        self.slots = slots or [(i, j) for i, opt in enumerate(optimizers) for j in range(len(opt.param_groups))]
        self._unscaled = False  # unscale_ ran since the last step

    @property
    def param_groups(self) -> list[dict]:
        """One per config group, in config order."""
        return [self.optimizers[i].param_groups[j] for i, j in self.slots]

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
        whole = [opt.state_dict() for opt in self.optimizers]
        states = [split_group(whole[i], j) for i, j in self.slots]
        return states[0] if len(states) == 1 else {"optimizers": states}

    def load_state_dict(self, state: dict) -> None:
        states = state["optimizers"] if "optimizers" in state else [state]
        if len(states) != len(self.slots):
            raise ConfigError(f"the checkpoint holds {len(states)} optimiser(s) and the config makes "
                              f"{len(self.slots)}; resume with the config it was trained with")
        for i, opt in enumerate(self.optimizers):
            mine = sorted(((j, saved) for (o, j), saved in zip(self.slots, states, strict=True) if o == i),
                          key=lambda pair: pair[0])
            # torch takes every setting from the checkpoint, the kernels too; those stay this machine's
            # (kernel_choice): a checkpoint from before the groups shared says None, a CPU run's foreach.
            kernels = [{k: g[k] for k in KERNEL_KEYS if k in g} for g in opt.param_groups]
            opt.load_state_dict(join_groups([saved for _, saved in mine]))
            for group, chosen in zip(opt.param_groups, kernels, strict=True):
                group.update(chosen)


def split_group(whole: dict, j: int) -> dict:
    """Param group `j` of an optimiser's state_dict as the state_dict of an optimiser holding only it:
    its parameters renumbered from 0, with their state."""
    group = whole["param_groups"][j]
    ids = group["params"]
    state = {new: whole["state"][old] for new, old in enumerate(ids) if old in whole["state"]}
    return {"state": state, "param_groups": [{**group, "params": list(range(len(ids)))}]}


def join_groups(parts: list[dict]) -> dict:
    """split_group's inverse: one state_dict from several optimisers' (each param group after the
    ones before it, its parameters numbered on from theirs)."""
    state, groups, offset = {}, [], 0
    for part in parts:
        for group in part["param_groups"]:
            ids = group["params"]
            state.update({offset + k: part["state"][old] for k, old in enumerate(ids) if old in part["state"]})
            groups.append({**group, "params": list(range(offset, offset + len(ids)))})
            offset += len(ids)
    return {"state": state, "param_groups": groups}


def build_optimizers(model: nn.Module, optim, batch_size: int) -> tuple[OptimizerSet, list[GroupPlan]]:
    """The config's optimisers, those of the same kind sharing one instance (merge_optimizers): one
    step call, and one foreach or fused kernel chain per group, for fast.yaml's three SGD groups."""
    plans = plan_groups(model, optim, batch_size)
    separate = [build_optimizer(p.params, p.name, p.lr, p.weight_decay, p.kwargs, p.where) for p in plans]
    return OptimizerSet(*merge_optimizers(separate, [p.name for p in plans])), plans


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


def multiplier(name: str, total_steps: int, warmup_steps: int, final_lr_ratio: float) -> Callable[[int], float]:
    """The schedule `name` as LambdaLR wants it: step → multiplier of the base lr. A plain function
    (not a partial), so LambdaLR saves None for it, as it always has."""
    fn = SCHEDULES[name]
    return lambda step: fn(step, total_steps, warmup_steps, final_lr_ratio)


def build_scheduler(optimizer, name: str, total_steps: int, warmup_steps: int, final_lr_ratio: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(name, total_steps, warmup_steps, final_lr_ratio))


class ScheduleSet:
    """One LambdaLR per optimiser of an OptimizerSet, with a multiplier per param group (each config
    group's own length), stepped together. Saved like OptimizerSet: one LambdaLR state per config
    group, in config order, so checkpoints from when each group had its own LambdaLR still load."""

    # The entries of a LambdaLR's state_dict that hold one value per param group; the rest (the step
    # count) are the scheduler's, the same for every group.
    PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas")

    def __init__(self, schedulers: list[torch.optim.lr_scheduler.LambdaLR], horizons: list[float] | None = None,
                 final_lr_ratio: float = 1.0, slots: list[tuple[int, int]] | None = None):
        self.schedulers = schedulers
        # (scheduler, param group) of each config group, as OptimizerSet.slots; by default every group.
        self.slots = slots or [(i, j) for i, s in enumerate(schedulers) for j in range(len(s.optimizer.param_groups))]
        self.horizons = horizons or [math.inf] * len(self.slots)  # the step each config group's schedule ends at
        self.final_lr_ratio = final_lr_ratio

    def freeze_finished(self) -> None:
        """Stop computing gradients for groups whose schedule has ended at lr 0 (e.g. fast's whitening
        bias after 3 epochs): they can never move again, and their gradient is what makes the backward
        pass reach back through the first, largest layers. The weights are exactly the same."""
        if self.final_lr_ratio != 0:
            return
        for (i, j), horizon in zip(self.slots, self.horizons, strict=True):
            scheduler = self.schedulers[i]
            if scheduler.last_epoch >= horizon:
                for param in scheduler.optimizer.param_groups[j]["params"]:
                    param.requires_grad_(False)

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> dict:
        whole = [s.state_dict() for s in self.schedulers]
        states = [{k: [v[j]] if k in self.PER_GROUP else v for k, v in whole[i].items()} for i, j in self.slots]
        return states[0] if len(states) == 1 else {"schedulers": states}

    def load_state_dict(self, state: dict) -> None:
        states = state["schedulers"] if "schedulers" in state else [state]
        if len(states) != len(self.slots):
            raise ConfigError(f"the checkpoint holds {len(states)} schedule(s) and the config makes "
                              f"{len(self.slots)}; resume with the config it was trained with")
        for i, scheduler in enumerate(self.schedulers):
            mine = [saved for (o, _), saved in sorted(zip(self.slots, states, strict=True), key=lambda pair: pair[0])
                    if o == i]
            joined = {**mine[0], **{k: [v for saved in mine for v in saved[k]] for k in self.PER_GROUP if k in mine[0]}}
            scheduler.load_state_dict(joined)


def build_schedules(optimizers: OptimizerSet, plans: list[GroupPlan], schedule, steps_per_epoch: int,
                    epochs: int) -> ScheduleSet:
    """The configured schedule for every group, over the run or over the group's `schedule_epochs`:
    one LambdaLR per optimiser, with each of its param groups' own multiplier."""
    warmup = round(schedule.warmup_epochs * steps_per_epoch)
    fns: list[list[Callable[[int], float] | None]] = [[None] * len(opt.param_groups) for opt in optimizers.optimizers]
    horizons = []
    for (i, j), plan in zip(optimizers.slots, plans, strict=True):
        total = round((plan.schedule_epochs or epochs) * steps_per_epoch)
        fns[i][j] = multiplier(schedule.name, total, min(warmup, total), schedule.final_lr_ratio)
        # Only a group that stops early is ever frozen: the others end with the run.
        horizons.append(total if plan.schedule_epochs is not None and schedule.name != "constant" else math.inf)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, group_fns)
                  for opt, group_fns in zip(optimizers.optimizers, fns, strict=True)]
    return ScheduleSet(schedulers, horizons, schedule.final_lr_ratio, optimizers.slots)
