"""How a training step gets its inputs: made for each step's batch, or prepared once an epoch.

An epoch's augmentation is drawn when the epoch starts, one draw per image (`draw_epoch`): image i
gets crop offsets dy[i], dx[i], flip[i] and a colour shift/scale wherever it sits in the epoch's
batches. The two ways of applying those draws (train.prepare) therefore show the model the same
numbers:

  step   each step gathers its images as uint8, crops, flips, normalises and lays them out. Memory:
         one batch of floats. The CPU's choice (the same img/s as `epoch` there, scripts/bench_train.py).
  epoch  when the epoch starts, the whole split is cropped, flipped, normalised and stored in the
         compute dtype and the model's layout on the device (airbench's way); a step is then one
         gather. On a GPU that trades ~10 small kernels a step for a few large ones an epoch.
         Memory: the split in floats (CIFAR-10 in bf16: 300 MiB).

In fp32 the two give the same weights bit for bit (tests/test_inputs.py). In bf16/fp16 `epoch`
stores the inputs rounded to that dtype, the rounding autocast gives them at a model's first
convolution anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnkit.config import Config
from cnnkit.data import Split, alternating_flips, augment_batch, channel_tensors, jitter_batch, jitter_draws
from cnnkit.device import AUTOCAST_DTYPES, Runtime, format_bytes
from cnnkit.tasks import Task
from cnnkit.training import distributed

# The epoch pipeline prepares the split in chunks of about this many uint8 values: large enough that
# a GPU runs a few big kernels, small enough that the float temporaries stay ~0.1 GiB.
_CHUNK_VALUES = 1 << 25


@dataclass
class EpochDraws:
    """One epoch's augmentation of the n training images, each tensor indexed by image (on the device)."""

    crop_padding: int
    hflip: bool
    pad_mode: str
    offsets: tuple[torch.Tensor, torch.Tensor] | None  # (n,), (n,): crop window corners in the padded image
    flip: torch.Tensor | None  # (n,) bool: mirror this image
    shift: torch.Tensor | None  # (n,) brightness, added to the normalised image
    scale: torch.Tensor | None  # (n,) contrast, multiplied after the shift

    def pixels(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images (b, C, H, W) of the images numbered idx (b,) → cropped and flipped."""
        return augment_batch(images, crop_padding=self.crop_padding, hflip=self.hflip, pad_mode=self.pad_mode,
                             flip=None if self.flip is None else self.flip[idx],
                             offsets=None if self.offsets is None else (self.offsets[0][idx], self.offsets[1][idx]))

    def colour(self, inputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Normalised inputs (b, C, H, W) of the images numbered idx (b,) → brightness/contrast jittered."""
        if self.shift is None:
            return inputs
        return jitter_batch(inputs, self.shift[idx], self.scale[idx])  # (b, C, H, W)


def draw_epoch(config: Config, task: Task, epoch: int, n: int, device: torch.device) -> EpochDraws | None:
    """The epoch's draws for n images, or None when the run does not augment.

    A generator seeded by (seed, epoch) on the device makes them: the same on every rank and after a
    resume, and no host round trip. Crops, then flips, then colour, each drawn only when asked for,
    so turning the colour jitter on keeps a run's crops and flips.
    """
    data = config.data
    if not (data.augment and task.augments):
        return None
    generator = torch.Generator(device=device).manual_seed(config.train.seed * 1_000_003 + epoch)
    p = data.crop_padding
    offsets = None
    if p > 0:
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=device)  # (n,) top of the window
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=device)  # (n,) left of the window
        offsets = (dy, dx)
    flip = None
    if data.hflip and data.flip_mode == "alternate":
        flip = alternating_flips(n, config.train.seed, epoch, device)  # (n,) bool
    elif data.hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5  # (n,) bool
    shift = scale = None
    if data.brightness or data.contrast:
        shift, scale = jitter_draws(n, data.brightness, data.contrast, generator, device)  # (n,), (n,)
    return EpochDraws(p, data.hflip, data.pad_mode, offsets, flip, shift, scale)


class StepInputs:
    """train.prepare=step: each step makes its batch from the uint8 images."""

    def __init__(self, split: Split, task: Task, runtime: Runtime, mean: list[float], std: list[float]):
        self.split, self.task, self.memory_format = split, task, runtime.memory_format
        self.mean, self.std = channel_tensors(mean, std, split.images.device)  # made once, not per step
        self.draws: EpochDraws | None = None

    def __len__(self) -> int:
        return len(self.split)

    def start_epoch(self, draws: EpochDraws | None) -> None:
        self.draws = draws

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch idx (B,): (inputs (b, C, H, W), labels (b,))."""
        idx = distributed.shard(idx)  # (b,): the draws are per image, so a rank augments its share alone
        # index_select, not images[idx]: the same rows, ~10x faster on the CPU for this gather.
        images = self.split.images.index_select(0, idx)  # (b, C, H, W) uint8
        if self.draws is not None:
            images = self.draws.pixels(images, idx)  # (b, C, H, W) uint8
        inputs = self.task.inputs(images, self.mean, self.std, self.memory_format)  # (b, C, H, W)
        if self.draws is not None:
            inputs = self.draws.colour(inputs, idx)  # (b, C, H, W)
        return inputs, self.split.labels.index_select(0, idx)


class EpochInputs:
    """train.prepare=epoch: the whole split prepared when each epoch starts; a step is one gather."""

    def __init__(self, split: Split, task: Task, runtime: Runtime, mean: list[float], std: list[float]):
        self.split, self.task = split, task
        self.mean, self.std = channel_tensors(mean, std, split.images.device)
        n, c, h, w = split.images.shape
        # A gather keeps a batch's rows in the order of its source, and index_select returns NCHW-strided
        # tensors: for channels_last the split is stored as (n, H, W, C) rows, and a batch is their
        # permuted view, which has channels_last strides.
        self.channels_last = runtime.channels_last
        shape = (n, h, w, c) if self.channels_last else (n, c, h, w)
        dtype = AUTOCAST_DTYPES.get(runtime.precision, torch.float32)
        self.rows = torch.empty(shape, dtype=dtype, device=split.images.device)  # (n, H, W, C) or (n, C, H, W)
        self.chunk = max(1, _CHUNK_VALUES // (c * h * w))
        self.prepared = False

    def __len__(self) -> int:
        return len(self.split)

    def start_epoch(self, draws: EpochDraws | None) -> None:
        """Crop, flip, normalise and jitter every image with this epoch's draws, into `rows`."""
        if draws is None and self.prepared:  # no augmentation: the inputs are the same every epoch
            return
        images = self.split.images
        for lo in range(0, len(images), self.chunk):
            hi = min(lo + self.chunk, len(images))
            chunk = images[lo:hi]  # (m, C, H, W) uint8
            if draws is not None:
                idx = torch.arange(lo, hi, device=images.device)  # (m,) the images' numbers
                chunk = draws.pixels(chunk, idx)  # (m, C, H, W) uint8
            inputs = self.task.inputs(chunk, self.mean, self.std)  # (m, C, H, W) float32
            if draws is not None:
                inputs = draws.colour(inputs, idx)  # (m, C, H, W)
            # The copy rounds to the stored dtype and changes the layout, in one pass.
            self.rows[lo:hi] = inputs.permute(0, 2, 3, 1) if self.channels_last else inputs
        self.prepared = True

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch idx (B,): (inputs (b, C, H, W), labels (b,))."""
        idx = distributed.shard(idx)  # (b,)
        rows = self.rows.index_select(0, idx)  # (b, H, W, C) or (b, C, H, W)
        inputs = rows.permute(0, 3, 1, 2) if self.channels_last else rows  # (b, C, H, W)
        return inputs, self.split.labels.index_select(0, idx)


TrainInputs = StepInputs | EpochInputs
PREPARES: dict[str, type[StepInputs] | type[EpochInputs]] = {"step": StepInputs, "epoch": EpochInputs}


def choose_prepare(setting: str, runtime: Runtime, split: Split) -> tuple[str, str]:
    """train.prepare "auto" → (epoch on a GPU where the prepared split takes at most a quarter of the free
    memory, else step; why). On the CPU the two measured the same (docs/benchmarks.md), and step
    needs no second copy of the split."""
    if setting != "auto":
        return setting, ""
    if runtime.device.type != "cuda":
        return "step", ""
    itemsize = AUTOCAST_DTYPES.get(runtime.precision, torch.float32).itemsize
    needed = split.images.numel() * itemsize
    free, _ = torch.cuda.mem_get_info(runtime.device)
    if needed <= free // 4:
        return "epoch", "auto: on a GPU"
    return "step", (f"auto: the split prepared in {runtime.precision} would take {format_bytes(needed)}, over a "
                    f"quarter of the GPU's {format_bytes(free)} free")


def train_inputs(config: Config, task: Task, runtime: Runtime, split: Split, mean: list[float],
                 std: list[float]) -> tuple[TrainInputs, str]:
    """The run's input pipeline over `split` (already on the device), and a note saying which, when auto chose."""
    name, why = choose_prepare(config.train.prepare, runtime, split)
    return PREPARES[name](split, task, runtime, mean, std), why
