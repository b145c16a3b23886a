"""Where a training step's time goes: the trainer's pieces timed one by one against the bare step.

    python scripts/profile_step.py --config configs/lenet.yaml [--set train.batch_size=1024] [--device cuda]

It builds the config's model, optimisers, schedule and EMA exactly as `cnnkit train` does, on
random uint8 images (the timings do not depend on the pixels), and prints milliseconds per step
for: the bare step (forward, loss, backward, optimiser on one ready batch), each piece the trainer
adds around it (batch gather and augmentation, normalisation and layout, the device-side loss and
hit sums, the schedule step, the EMA update), and a whole `train_one_epoch` over the same images with
each input pipeline (train.prepare=step and =epoch).
The whole epoch's ms/step is printed beside the bare step plus the pieces, so a cost nobody
accounted for shows up. The efficiency comes from rounds that interleave an epoch's worth of bare
steps on one ready batch, as many bare steps each on a new gathered and normalised batch, and a
whole epoch, so the machine's drift falls on all three alike. Run it on an idle machine: it
measures, it does not assert.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it runs, so that --help answers at once (~4 s sooner here)
    import torch


def timed(fn, device: torch.device, seconds: float) -> float:
    """Mean milliseconds per call of `fn`, over at least `seconds` (after three warm-up calls)."""
    for _ in range(3):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 10 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync(device)
    return 1000 * (time.perf_counter() - start) / calls


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=10_000, help="random training images to make")
    parser.add_argument("--seconds", type=float, default=3.0, help="time each piece for at least this long")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds of bare steps and whole epochs")
    parser.add_argument("--verbose", action="store_true", help="print every round's ms/step")
    args = parser.parse_args()

    import torch

    from cnnkit.config import load_config
    from cnnkit.data import Split, augment_batch, channel_tensors
    from cnnkit.device import setup_runtime
    from cnnkit.tasks import task_for
    from cnnkit.training.inputs import PREPARES, choose_prepare
    from cnnkit.training.loop import train_one_epoch
    from cnnkit.training.state import build_state

    config = load_config(args.config, [*args.sets, f"train.device={args.device}"])
    train = config.train
    runtime = setup_runtime(train.device, train.precision, train.threads, train.channels_last)
    device = runtime.device
    task = task_for(config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.images,), generator=generator).to(device)
    split = Split(images, labels)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    state = build_state(config, runtime, 10, len(split), init_images=None)
    model, optimizer, scheduler, ema = state.train_model, state.optimizer, state.scheduler, state.ema
    B = train.batch_size
    mean_t, std_t = channel_tensors(mean, std, device)
    idx = torch.randperm(args.images, generator=generator)[:B].to(device)  # (B,)
    aug_generator = torch.Generator(device=device).manual_seed(0)
    x = task.inputs(images[idx], mean_t, std_t, runtime.memory_format)  # (B, C, H, W)
    y = labels[idx]  # (B,)

    def bare_step(inputs=x, targets=y):
        with runtime.autocast():
            out = model(inputs)
        loss = task.loss(out.float(), targets, train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def gather_augment():
        batch = images.index_select(0, idx)  # (B, C, H, W) uint8, as the loop gathers
        if config.data.augment and task.augments:
            batch = augment_batch(batch, crop_padding=config.data.crop_padding, hflip=config.data.hflip,
                                  generator=aug_generator, pad_mode=config.data.pad_mode)
        return batch

    batch = gather_augment()

    def normalise():
        return task.inputs(batch, mean_t, std_t, runtime.memory_format)

    with runtime.autocast():
        out = model(x).detach()
    loss = task.loss(out.float(), y, train.label_smoothing).detach()
    sums = torch.zeros(3, device=device, dtype=torch.float64)

    def account():
        finite = torch.isfinite(loss)
        sums.add_(torch.stack([torch.where(finite, loss, 0.0).double() * B, task.hits(out, y).double(),
                               (~finite).double()]))

    pieces = {"bare step (forward, loss, backward, optimiser)": bare_step,
              "gather + augment": gather_augment, "normalise + layout": normalise,
              "loss/hit sums": account, "schedule step": scheduler.step}
    if ema is not None:
        pieces["EMA update"] = ema.update
    ms = {name: timed(fn, device, args.seconds) for name, fn in pieces.items()}
    for name, value in ms.items():
        print(f"{name:<48} {value:8.3f} ms/step")

    # The efficiency: whole epochs against as many bare steps, interleaved in rounds in this one
    # process. This machine drifts by ±10% within a minute, and between processes too, so one
    # block of bare steps timed before a block of epochs (or in another process, as bench_train.py
    # must) can show a gap that is only the drift; the medians of interleaved rounds do not.
    # A third kind of round, the bare step on a new batch every step (gathered and normalised,
    # not augmented), separates what any trainer pays for fresh data from the loop's own costs.
    steps = len(split) // B
    batches = torch.randperm(len(split), generator=generator)[: steps * B].view(steps, B).to(device)  # (S, B)

    def bare_round(epoch: int) -> None:
        for _ in range(steps):
            bare_step()

    def fresh_round(epoch: int) -> None:
        for batch_idx in batches:
            bare_step(task.inputs(images.index_select(0, batch_idx), mean_t, std_t, runtime.memory_format),
                      labels.index_select(0, batch_idx))

    # Both input pipelines (train.prepare), each a whole train_one_epoch: step makes each batch from the
    # uint8 images; epoch prepares the whole split when the epoch starts, then a step is one gather.
    pipelines = {name: make(split, task, runtime, mean, std) for name, make in PREPARES.items()}
    chosen, _ = choose_prepare(config.train.prepare, runtime, split)

    def epoch_round(name: str):
        def run_round(epoch: int) -> None:
            train_one_epoch(model, optimizer, scheduler, pipelines[name], task=task, runtime=runtime, config=config,
                            epoch=epoch, scaler=state.scaler, ema=ema)
        return run_round

    rounds = {"bare (one ready batch)": bare_round, "bare, a new batch each step": fresh_round,
              **{f"train_one_epoch, prepare={name}": epoch_round(name) for name in pipelines}}
    per_step = interleaved(rounds, steps, args.rounds, device)
    print(f"interleaved, {args.rounds} rounds of {steps} steps (median, range in ms/step):")
    for name, values in per_step.items():
        print(f"  {name:<46} {statistics.median(values):8.3f}   {min(values):.2f}–{max(values):.2f}")
        if args.verbose:
            print("    by round: " + " ".join(f"{v:.2f}" for v in values))
    medians = {name: statistics.median(v) for name, v in per_step.items()}
    bare, fresh = medians["bare (one ready batch)"], medians["bare, a new batch each step"]
    print(f"bare + pieces {sum(ms.values()):.3f} ms/step")
    for name in pipelines:
        whole = medians[f"train_one_epoch, prepare={name}"]
        mark = " (the config's choice)" if name == chosen else ""
        print(f"prepare={name}{mark}: efficiency (median bare / median epoch) {bare / whole:.2f}, "
              f"against the new-batch bare step {fresh / whole:.2f}")


def interleaved(rounds: dict, steps: int, n_rounds: int, device: torch.device) -> dict[str, list[float]]:
    """ms/step of each kind of round, run in turn `n_rounds` times: round r of every kind is
    timed within the same minute, so the machine's drift falls on all of them alike."""
    per_step = {name: [] for name in rounds}
    for r in range(n_rounds):
        for name, run_round in rounds.items():
            sync(device)
            start = time.perf_counter()
            run_round(r)
            sync(device)
            per_step[name].append(1000 * (time.perf_counter() - start) / steps)
    return per_step


if __name__ == "__main__":
    main()
