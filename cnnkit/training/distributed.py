"""torch.distributed under torchrun: the only multi-process engine cnnkit uses.

With one process every function here is a no-op, so the training loop has a single code path.
Under `torchrun` (WORLD_SIZE > 1) each rank joins the process group (nccl on CUDA, one GPU per
process; gloo on the CPU), takes its share of every global batch, and sums its metrics with the
others; rank 0 alone prints and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cnnkit.errors import ConfigError, DeviceError


@dataclass
class DistInfo:
    device_spec: str  # what this rank should train on


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup(device_spec: str) -> DistInfo:
    """Join the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return DistInfo(device_spec)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    if use_cuda:
        _check_gpus(device_spec, int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
        torch.cuda.set_device(local_rank)
        device_spec = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(device_spec)


def _check_gpus(device_spec: str, local_world: int) -> None:
    """One GPU per process on this machine, checked before any rank touches a device: rank N on a machine
    without GPU N would die with "invalid device ordinal" (or a device-side error) instead."""
    if not torch.cuda.is_available():
        raise DeviceError(f"train.device={device_spec}: CUDA is not available on this machine; use cpu or auto")
    gpus = torch.cuda.device_count()
    if local_world > gpus:
        raise DeviceError(f"--nproc {local_world} with train.device={device_spec} needs {local_world} GPUs, one per "
                          f"process, and this machine has {gpus}; use --nproc {gpus} or fewer, or "
                          "--set train.device=cpu (DDP over gloo on the CPU)")


def check_batch(batch_size: int, world: int | None = None) -> None:
    """The global batch splits evenly over the processes (`world`: this run's, unless given)."""
    world = world_size() if world is None else world
    if batch_size % world:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must divide by the "
                          f"{world} processes; use a multiple of {world}")


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (all of it in a single process)."""
    world = world_size()
    if world == 1:
        return batch
    per_rank = batch.shape[0] // world
    r = rank()
    return batch[r * per_rank: (r + 1) * per_rank]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's largest value: how ranks agree on a flag (stop, non-finite) so they leave together."""
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


# ---------------------------------------------------------------------------------------- SyncBatchNorm


class _AllReduceSum(torch.autograd.Function):
    """all-reduce with a gradient: d(Σ_r x_r)/dx_r = 1, so each rank's gradient is the sum of all ranks'."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad)


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch, for gloo (CPU) and NCCL (CUDA) alike.

    In training under DDP the per-channel sum and squared deviation are all-reduced (autograd
    flows through the all-reduce, as in torch's SyncBatchNorm), so N processes normalise, and
    update the running statistics, exactly as one process with the whole batch would. Elsewhere
    it is plain BatchNorm, and its state_dict keys are BatchNorm's.

    Not torch's nn.SyncBatchNorm, even on CUDA: that runs on GPUs only, and its forward drops
    empty ranks with a boolean mask (`count_all[mask]`), a host sync in every BatchNorm layer at
    every step. Every rank here has the same share of every batch (cnnkit.training.loop), so there
    is nothing to drop, and nothing here waits for the device.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        x = input.float()  # (b, C, ...) statistics in fp32 even under autocast
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()  # values per channel in the global batch
        mean = _AllReduceSum.apply(x.sum(dims)) / count  # (C,)
        centred = x - mean.view(shape)  # (b, C, ...)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / count  # (C,) biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum None: the cumulative average, weighted 1/n on the device (float() would sync)
                factor = (self.num_batches_tracked.reciprocal().to(self.running_mean.dtype)
                          if self.momentum is None else self.momentum)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / max(1, count - 1), factor)  # unbiased, as BatchNorm
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer of `model` normalising over the global batch (AllReduceBatchNorm), on
    any device and backend. Parameters and buffers are kept, not copied."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, AllReduceBatchNorm):
        sync = AllReduceBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                  model.track_running_stats)
        if model.affine:
            sync.weight, sync.bias = model.weight, model.bias
        if model.track_running_stats:
            sync.running_mean, sync.running_var = model.running_mean, model.running_var
            sync.num_batches_tracked = model.num_batches_tracked
        sync.train(model.training)
        return sync
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child))
    return model


def wrap(model: nn.Module, runtime) -> nn.Module:
    if not is_distributed():
        return model
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_path(path: Path) -> Path:
    """Rank 0 chose the run folder; every rank needs the same one."""
    if not is_distributed():
        return path
    holder = [str(path)]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def sync_state(model: nn.Module) -> None:
    """Give every rank rank 0's weights (after rank 0 alone loaded best.pt)."""
    if not is_distributed():
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def teardown() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, cnnkit_args: list[str]) -> int:
    """`cnnkit train --nproc N ...`: the same as `torchrun --nproc_per_node=N -m cnnkit train ...`."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = ["--nproc_per_node", str(nproc), "--standalone", "-m", "cnnkit", *cnnkit_args]
    try:
        torchrun.main(args)
    except ChildFailedError as exc:
        # The failing worker already printed its own one-line error; pass its exit code on.
        codes = [f.exitcode for f in exc.failures.values() if f.exitcode]
        return codes[0] if codes and codes[0] > 0 else 1
    except SignalException as exc:
        # Ctrl-C reaches torchrun alone (its workers run in their own session); it passes the signal
        # on, the workers agree to stop at their next sync point and print how to resume, and it
        # re-raises here once they have exited. Exit as a single process would.
        return 128 + int(exc.sigval)
    return 0
