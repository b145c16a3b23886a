"""torch.distributed under torchrun: the only multi-process engine cnnkit uses.

With one process every function here is a no-op, so the training loop has a single code path.
Under `torchrun` (WORLD_SIZE > 1) each rank joins the process group (nccl on CUDA, gloo on the
CPU), takes its share of every global batch, and sums its metrics with the others; rank 0 alone
prints and writes files.
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
        if not torch.cuda.is_available():
            raise DeviceError(f"train.device={device_spec}: CUDA is not available on this machine; use cpu or auto")
        torch.cuda.set_device(local_rank)
        device_spec = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(device_spec)


def check_batch(batch_size: int) -> None:
    world = world_size()
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
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = ["--nproc_per_node", str(nproc), "--standalone", "-m", "cnnkit", *cnnkit_args]
    try:
        torchrun.main(args)
    except ChildFailedError as exc:
        # The failing worker already printed its own one-line error; pass its exit code on.
        codes = [f.exitcode for f in exc.failures.values() if f.exitcode]
        return codes[0] if codes and codes[0] > 0 else 1
    return 0
