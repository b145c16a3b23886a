"""The epoch loop: one pass over the training split, a whole batch at a time (airbench style).

Every batch is an index into tensors already on the device (cnnkit.training.inputs makes the
model's inputs from it). The order and the augmentation draws are functions of (seed, epoch) only,
so a resumed run or another DDP rank makes the same ones. Nothing here prints: progress goes to a
`report` function.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnkit.config import Config
from cnnkit.data import epoch_permutation
from cnnkit.device import Runtime
from cnnkit.errors import TrainingError
from cnnkit.tasks import Task
from cnnkit.training import distributed
from cnnkit.training.ema import WeightEMA
from cnnkit.training.inputs import TrainInputs, draw_epoch

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


def train_one_epoch(model: nn.Module, optimizer, scheduler, inputs: TrainInputs, *, task: Task, runtime: Runtime,
                    config: Config, epoch: int, scaler=None, ema: WeightEMA | None = None,
                    stop: StopFlag | None = None, report: Report | None = None) -> dict[str, float]:
    """One epoch; returns the row's train_loss (and the task's train metrics), epoch_s and images_per_s.

    `inputs` (cnnkit.training.inputs) turns a batch of image numbers into the model's inputs; it gets
    the epoch's augmentation draws first, and with train.prepare=epoch prepares the whole split then
    (inside the epoch's clock).

    The step loop never waits for the device: losses and hits are summed on it, and the host reads
    one small tensor (finite losses? a stop? the loss to show) every `train.sync_every` steps, in
    `_check_window`, and the totals once at the end of the epoch. The one exception is fp16: the
    grad scaler's skip decision is one read per step (cnnkit.optim.registry.OptimizerSet.step).
    tests/test_sync_audit.py counts the reads.
    """
    model.train()
    if distributed.world_size() == 1:  # DDP expects the same parameters to get gradients every step
        scheduler.freeze_finished()
    train_cfg = config.train
    device = runtime.device
    order = torch.stack(global_batches(len(inputs), train_cfg.batch_size, train_cfg.seed, epoch)).to(device)  # (S, B)
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss·images, hits, non-finite losses
    window_start, seen = 0, 0
    stop = stop if stop is not None else StopFlag()
    # One process checks the flag before every step; under DDP the ranks decide together at the
    # sync points (_check_window), since a rank leaving alone strands the others in an all-reduce.
    solo = distributed.world_size() == 1
    start = _now(device)
    inputs.start_epoch(draw_epoch(config, task, epoch, len(inputs), device))
    for step in range(len(order)):
        if solo and stop.signum is not None:
            raise StopRequested()
        batch, labels = inputs.batch(order[step])  # (b, C, H, W), (b,): this rank's share
        loss = _train_step(model, optimizer, scheduler, batch, labels, sums, task=task, runtime=runtime,
                           scaler=scaler, ema=ema, smoothing=train_cfg.label_smoothing,
                           grad_clip=train_cfg.grad_clip, micro_batch=train_cfg.micro_batch)
        seen += order.shape[1] // distributed.world_size()  # this rank's share (distributed.shard)
        shown = None  # the loss the progress view shows, known only at a sync point
        if (step + 1 - window_start) >= train_cfg.sync_every or step + 1 == len(order):
            shown = _check_window(sums, loss, step + 1 - window_start, scaler, epoch, step, len(order), optimizer,
                                  stop)
            window_start = step + 1
        if report is not None and distributed.rank() == 0:
            report({"kind": "step", "epoch": epoch + 1, "step": step + 1, "steps": len(order), "loss": shown})
    seconds = _now(device) - start
    return _epoch_totals(sums, seen, seconds, task)


def _train_step(model: nn.Module, optimizer, scheduler, inputs: torch.Tensor, labels: torch.Tensor,
                sums: torch.Tensor, *, task: Task, runtime: Runtime, scaler, ema: WeightEMA | None,
                smoothing: float, grad_clip: float | None, micro_batch: int | None = None) -> torch.Tensor:
    """One step on this rank's share of a batch, inputs (b, C, H, W) and labels (b,): forward and
    backward, the update, and the batch's loss, hits and non-finite count added into `sums` (3,).
    Returns the loss, on the device; nothing here reads a value back to the host (save fp16's skip
    decision).

    With `micro_batch` the share goes forward and backward in chunks of that many images, each
    chunk's loss weighted by its share of the batch, so the gradients add up to the whole batch's
    (BatchNorm then normalises each chunk by its own statistics: ghost batch norm)."""
    targets = task.targets(inputs, labels)
    optimizer.zero_grad(set_to_none=True)
    b = labels.shape[0]
    size = micro_batch if micro_batch and micro_batch < b else b
    loss, hits = None, None
    for lo in range(0, b, size):
        last = lo + size >= b
        # Under DDP the gradients are all-reduced once, with the last chunk's backward.
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with runtime.autocast():
                outputs = model(inputs[lo: lo + size])  # (m, K)
                chunk_loss = task.loss(outputs.float(), targets[lo: lo + size], smoothing)
            if size < b:
                chunk_loss = chunk_loss * (outputs.shape[0] / b)  # this chunk's share of the batch mean
            _backward(chunk_loss, scaler)
        loss = chunk_loss.detach() if loss is None else loss + chunk_loss.detach()
        chunk_hits = task.hits(outputs, labels[lo: lo + size])
        hits = chunk_hits if hits is None else hits + chunk_hits
    _update(model, optimizer, scheduler, scaler, ema, grad_clip)
    finite = torch.isfinite(loss)
    sums += torch.stack([torch.where(finite, loss, 0.0).double() * b, hits.double(), (~finite).double()])
    return loss


def _check_window(sums: torch.Tensor, loss: torch.Tensor, window: int, scaler, epoch: int, step: int,
                  steps: int, optimizer, stop: StopFlag | None = None) -> float:
    """The one host read of a window: was every loss in it finite, was a stop asked for, and the last
    loss (returned, for the progress view), in a single transfer.

    Without a grad scaler one non-finite loss has already poisoned the weights; with one (fp16)
    the scaler skipped those steps, and only a window that is non-finite throughout means
    training has truly diverged. Under DDP both answers are every rank's worst (one all-reduce),
    so all ranks stop, or raise, at the same step.
    """
    signum = stop.signum if stop is not None and stop.signum is not None else 0
    flags = torch.stack([sums[2], sums.new_full((), float(signum))])  # (2,) made on the device: no upload
    flags = distributed.all_reduce_max(flags)
    bad, agreed_signum, last = torch.cat([flags, loss.reshape(1).to(flags.dtype)]).tolist()  # (3,) → the read
    if agreed_signum and stop is not None:
        stop.signum = stop.signum or int(agreed_signum)  # a rank the signal has not reached yet stops too
        raise StopRequested()
    if bad and (scaler is None or bad >= window):
        why = "every step of the last" if scaler is not None else f"{int(bad)} of the last"
        raise TrainingError(
            f"loss became {last} ({why} {window} steps non-finite) at epoch {epoch + 1}, step "
            f"{step + 1}/{steps}; {kept(epoch + 1)} — lower optim.lr (now {optimizer.param_groups[0]['lr']:.3g}) "
            "or set train.grad_clip")
    sums[2].zero_()
    return last


def _epoch_totals(sums: torch.Tensor, seen: int, seconds: float, task: Task) -> dict[str, float]:
    seen_t = sums.new_full((1,), float(seen))  # (1,) on the device
    totals = distributed.all_reduce_sum(torch.cat([sums[:2], seen_t])).tolist()  # once an epoch
    n = max(1.0, totals[2])
    result = {"train_loss": totals[0] / n, "epoch_s": seconds, "images_per_s": n / seconds}
    result.update(task.train_fields(totals[1] / n))
    return result


def _now(device: torch.device) -> float:
    """Wall-clock time once the device has finished what was queued: epoch times that mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _step(loss: torch.Tensor, model: nn.Module, optimizer, scheduler, scaler, ema: WeightEMA | None,
          grad_clip: float | None) -> None:
    """A whole step from one loss: fresh gradients, backward, update."""
    optimizer.zero_grad(set_to_none=True)
    _backward(loss, scaler)
    _update(model, optimizer, scheduler, scaler, ema, grad_clip)


def _backward(loss: torch.Tensor, scaler) -> None:
    """Gradients of `loss` added into .grad (fp16 through the grad scaler)."""
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


def _update(model: nn.Module, optimizer, scheduler, scaler, ema: WeightEMA | None, grad_clip: float | None) -> None:
    """Clip, optimiser and schedule step, EMA update, once the step's gradients are all in."""
    if scaler is not None:
        optimizer.unscale_(scaler)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step(scaler)  # through the scaler, which skips the step on an fp16 overflow
    if scaler is not None:
        scaler.update()
    scheduler.step()
    if ema is not None:
        ema.update()


def kept(epoch: int) -> str:
    """What a failure in `epoch` (1-based) leaves behind, for the error message."""
    return f"the last good checkpoint (epoch {epoch - 1}) is kept" if epoch > 1 else "no checkpoint was saved"
