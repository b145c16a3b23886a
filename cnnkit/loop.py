"""The epoch loop: one pass over the training split, a whole uint8 batch at a time (airbench style).

Every batch is an index into uint8 tensors already on the device, augmented and normalised as a
whole batch. The order and the augmentation draws are functions of (seed, epoch) only, so a
resumed run or another DDP rank makes the same ones. Nothing here prints: progress goes to a
`report` function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnkit import distributed
from cnnkit.config import Config
from cnnkit.data import Split, augment_batch, epoch_permutation
from cnnkit.device import Runtime
from cnnkit.ema import WeightEMA
from cnnkit.errors import TrainingError
from cnnkit.tasks import Task

Report = Callable[[dict[str, Any]], None]


class StopRequested(Exception):
    """Raised between steps once a StopFlag is set; the unfinished epoch is dropped, never saved."""


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
    """One epoch; returns the row's train_loss (and the task's train metrics), epoch_s and images_per_s."""
    model.train()
    train_cfg, data_cfg = config.train, config.data
    rank = distributed.rank()
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
            raise StopRequested()
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
                f"{kept(epoch + 1)} — lower optim.lr (now {optimizer.param_groups[0]['lr']:.3g}) "
                "or set train.grad_clip"
            )
        _step(loss, model, optimizer, scheduler, scaler, ema, train_cfg.grad_clip)
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
    return result


def _step(loss: torch.Tensor, model: nn.Module, optimizer, scheduler, scaler, ema: WeightEMA | None,
          grad_clip: float | None) -> None:
    """Backward, clip, optimiser and schedule step, EMA update (fp16 through the grad scaler)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update()


def kept(epoch: int) -> str:
    """What a failure in `epoch` (1-based) leaves behind, for the error message."""
    return f"the last good checkpoint (epoch {epoch - 1}) is kept" if epoch > 1 else "no checkpoint was saved"
