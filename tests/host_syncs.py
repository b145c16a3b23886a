"""Counting the host reads a piece of code makes: the ops that make the CPU wait for the device.

On CUDA every kernel is queued and the Python loop runs ahead of the GPU; an op whose result the
host needs (a value, a shape that depends on values) waits until the device has finished all the
work queued before it. `HostSyncAudit` records those ops while it is active, by the phase the code
is in (set with `audit.phase(name)`), from two vantage points:

- a TorchDispatchMode sees every aten op: `_local_scalar_dense` (`.item()`, `float(t)`, `bool(t)`,
  `if t:`), ops whose output size depends on values (`nonzero`, `masked_select`, `unique`,
  `bincount`, `repeat_interleave` without `output_size`, indexing with a boolean mask), ops that
  return a Python bool (`equal`, `is_nonzero`), copies from the device to the host, and tensors
  built from host data (`torch.tensor(...)`: on CUDA a blocking upload);
- a TorchFunctionMode sees `Tensor.tolist()`, `.numpy()` and `.cpu()`, which copy out without an
  aten op the dispatch mode would see.

With `device="cuda"` only reads of CUDA tensors (and uploads to them) count: that is exact. On
the CPU every tensor is a host tensor, so the audit stands in for a GPU: it counts every read,
except of the tensors torch keeps on the host even when training on CUDA — an optimiser's `step`
counters (Adam's, unless `capturable=True`) — and of the host scalars torch.optim makes for them.
The CPU cannot see a sync that only the CUDA kernel makes (`bincount` sizes its output on the
host on CUDA only), so such ops are listed by name.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that return a Python value or a value-dependent shape: the host must wait for the device.
_READS = {
    aten._local_scalar_dense.default, aten.item.default, aten.equal.default, aten.is_nonzero.default,
    aten.nonzero.default, aten.nonzero_numpy.default, aten.masked_select.default, aten.bincount.default,
    aten.histc.default, aten._unique.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.unique_dim_consecutive.default, aten.allclose.default,
}
# Indexing ops: a sync when an index is a boolean (or uint8) mask, which goes through nonzero.
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_LIFTS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}  # torch.tensor(host data)
_COPIES = {aten._to_copy.default, aten.copy_.default}
_TORCH_OPTIM = str(Path(torch.optim.__file__).parent)


class _Dispatch(TorchDispatchMode):
    def __init__(self, audit: HostSyncAudit):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.audit._look(func, args, kwargs)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, audit: HostSyncAudit):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in (torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu) or not args:
            return func(*args, **kwargs)
        self.audit._read(args[0], f"Tensor.{func.__name__}")
        self.audit._inside_copy_out += 1  # its own device→host copy (on CUDA) is this same read
        try:
            return func(*args, **kwargs)
        finally:
            self.audit._inside_copy_out -= 1


class HostSyncAudit:
    """`with HostSyncAudit("cpu") as audit:` … `audit.events` lists (phase, what) for every host sync.

    `audit.phase(name)` (a context manager) names the code running inside it; nested phases keep
    the innermost name. Events outside every phase go to phase None.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.events: list[tuple[str | None, str]] = []
        self._phases: list[str] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._modes: contextlib.ExitStack | None = None
        self._inside_copy_out = 0

    # -- recording

    def __enter__(self) -> HostSyncAudit:
        self._modes = contextlib.ExitStack()
        self._modes.enter_context(_Function(self))
        self._modes.enter_context(_Dispatch(self))
        return self

    def __exit__(self, *exc) -> None:
        self._modes.close()

    @contextlib.contextmanager
    def phase(self, name: str):
        self._phases.append(name)
        try:
            yield
        finally:
            self._phases.pop()

    def watch_optimizers(self, optimizers) -> None:
        """Optimisers whose host-side `step` counters may be read freely (they live on the CPU on CUDA too)."""
        self._optimizers.extend(getattr(optimizers, "optimizers", optimizers))

    # -- queries

    def count(self, phase: str | None) -> int:
        return sum(1 for p, _ in self.events if p == phase)

    def summary(self) -> Counter:
        return Counter(self.events)

    # -- the rules

    def _record(self, what: str) -> None:
        self.events.append((self._phases[-1] if self._phases else None, what))

    def _on_device(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor.device.type == self.device

    def _host_state(self, tensor: torch.Tensor) -> bool:
        """An optimiser's step counter: a host tensor by design (torch keeps it on the CPU on CUDA too)."""
        for opt in self._optimizers:
            for state in opt.state.values():
                step = state.get("step") if isinstance(state, dict) else None
                if isinstance(step, torch.Tensor) and step.data_ptr() == tensor.data_ptr():
                    return True
        return False

    def _read(self, tensor, what: str) -> None:
        if not self._on_device(tensor):
            return
        if self.device == "cpu" and tensor.dim() == 0 and self._host_state(tensor):
            return
        self._record(what)

    def _look(self, func, args, kwargs) -> None:
        name = str(func).removeprefix("aten.")
        if func in _READS:
            self._read(args[0], name)
        elif func in _INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
                self._read(args[0], f"{name} with a boolean mask")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self._read(args[0], name)
        elif func in _LIFTS:
            # torch.tensor(host data, device=...): on CUDA an upload the host waits for (torch builds
            # the tensor below this mode and shows only the lift, already on its device). On the CPU
            # every such tensor counts, save torch.optim's host scalars for its CPU step counters,
            # which stay on the host on CUDA too.
            if self.device != "cpu" and self._on_device(args[0]):
                self._record(f"{name} (uploaded from host data)")
            elif self.device == "cpu" and not _called_from(_TORCH_OPTIM):
                self._record(f"{name} (a tensor made from host data)")
        elif func in _COPIES and self.device != "cpu" and not self._inside_copy_out:
            if func is aten.copy_.default:  # copy_(dst, src, non_blocking=False)
                src, dst_device = args[1], args[0].device
                non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            else:  # _to_copy(src, *, dtype, layout, device, pin_memory, non_blocking, memory_format)
                src, dst_device, non_blocking = args[0], kwargs.get("device"), kwargs.get("non_blocking", False)
            if not isinstance(src, torch.Tensor) or dst_device is None:
                return
            dst_type = torch.device(dst_device).type
            if src.device.type == self.device and dst_type == "cpu":
                self._record(f"{name} device→host")
            elif src.device.type == "cpu" and dst_type == self.device and not non_blocking:
                self._record(f"{name} host→device")


def _called_from(folder: str) -> bool:
    """Whether any Python frame on the stack runs code from `folder`."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(folder):
            return True
        frame = frame.f_back
    return False


# ---------------------------------------------------------------------------------------- a whole run


def _phased(audit: HostSyncAudit, name: str, fn):
    def wrapper(*args, **kwargs):
        with audit.phase(name):
            return fn(*args, **kwargs)
    return wrapper


def audited_fit(config, monkeypatch, device: str, scaler=None) -> HostSyncAudit:
    """`fit(config)` under a HostSyncAudit whose phases are the loop's: "step" (one training step:
    the input pipeline's batch and _train_step), "epoch start" (the pipeline's epoch preparation),
    "window" (a sync point, _check_window), "weights" (the epoch's finiteness check),
    "eval batch" (a forward and a meter update in `evaluate`). `scaler` replaces the run's grad
    scaler (fp16's path on the CPU: torch.amp.GradScaler("cpu"))."""
    from cnnkit.evaluation import evaluate as evaluate_mod
    from cnnkit.evaluation import metrics
    from cnnkit.training import fit as fit_mod
    from cnnkit.training import inputs as inputs_mod
    from cnnkit.training import loop

    audit = HostSyncAudit(device)
    real_build = fit_mod.build_state

    def build_state(*args, **kwargs):
        state = real_build(*args, **kwargs)
        if scaler is not None:
            state.scaler = scaler
        audit.watch_optimizers(state.optimizer)
        return state

    monkeypatch.setattr(fit_mod, "build_state", build_state)
    monkeypatch.setattr(loop, "_train_step", _phased(audit, "step", loop._train_step))
    for pipeline in inputs_mod.PREPARES.values():  # a step's batch is made by the input pipeline
        monkeypatch.setattr(pipeline, "batch", _phased(audit, "step", pipeline.batch))
        monkeypatch.setattr(pipeline, "start_epoch", _phased(audit, "epoch start", pipeline.start_epoch))
    monkeypatch.setattr(loop, "_check_window", _phased(audit, "window", loop._check_window))
    monkeypatch.setattr(fit_mod, "weights_finite", _phased(audit, "weights", fit_mod.weights_finite))
    monkeypatch.setattr(evaluate_mod, "_forward", _phased(audit, "eval batch", evaluate_mod._forward))
    for meter in (metrics.AccuracyMeter, metrics.SquaredErrorMeter):
        monkeypatch.setattr(meter, "update", _phased(audit, "eval batch", meter.update))
    with audit:
        fit_mod.fit(config, run_name="audit")
    return audit
