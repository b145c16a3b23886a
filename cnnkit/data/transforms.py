"""Whole-batch tensor ops the trainer runs on the device: augment, normalise, grayscale, statistics.

Nothing here decodes images inside the epoch loop: augmentation and normalisation work on whole
uint8 batches already on the training device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_grayscale(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 1, H, W), ITU-R 601 luma rounded like Pillow's convert("L")."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"to_grayscale expects (N, 3, H, W) images, got {tuple(images.shape)}")
    # Integer weights summing to 2**16 (Pillow's), plus half for rounding: exact and device-independent.
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=images.device).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], chunk):  # chunks bound the int32 temporary
        x = images[start:start + chunk].to(torch.int32)  # (b, 3, H, W)
        y = ((x * weights).sum(dim=1, keepdim=True) + 32768) >> 16  # (b, 1, H, W)
        out[start:start + chunk] = y.to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor, chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of images/255, accumulated in float64 chunk by chunk."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros(channels, dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        # float32 within a chunk (float64 is ~10x slower on the CPU), float64 across chunks.
        x = images[start:start + chunk].to(torch.float32) / 255  # (b, C, H, W)
        total += x.sum(dim=(0, 2, 3)).double()
        total_sq += (x * x).sum(dim=(0, 2, 3)).double()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map coordinates up to `size − 1` beyond either edge back inside, mirroring without repeating
    the edge pixel (torch's 'reflect' padding): −1 → 1, size → size − 2."""
    index = index.abs()  # (…,) the left/top edge
    return (size - 1) - (size - 1 - index).abs()  # (…,) the right/bottom edge


def augment_batch(
    images: torch.Tensor, *, crop_padding: int, hflip: bool, generator: torch.Generator | None = None,
    pad_mode: str = "zeros", flip: torch.Tensor | None = None,
    offsets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Random translation by up to `crop_padding` pixels and horizontal flips, each image its own draw.

    The draws come from `generator`, which lives on the images' device (no host round trip), crop
    offsets first, then flips; on the CPU a seeded generator gives the same images on every run.
    pad_mode "zeros" fills what the translation uncovers with black (the classic padded crop);
    "reflect" mirrors the picture there. `flip` (B,) bool, when given, says which images to mirror
    (the alternating scheme); otherwise each flips with p = 0.5. `offsets` (dy (B,), dx (B,)), each
    in 0..2·crop_padding, when given, are the crop windows' top-left corners in the padded images
    (the training loop draws them once an epoch, per image: cnnkit.training.inputs). One gather makes
    the whole batch.
    """
    if crop_padding <= 0 and not hflip:
        return images
    B, C, H, W = images.shape
    device = images.device
    p = max(crop_padding, 0)
    if pad_mode == "reflect" and p >= min(H, W):  # the mirror of a pixel p away must lie inside the picture
        raise ValueError(f"reflect padding {p} needs images larger than {p}×{p}, got {H}×{W}")
    if p == 0:
        # Flips alone: a select between the batch and its mirror costs two passes over the uint8
        # batch, where the general per-pixel gather below costs ~10x that (a third of lenet's step).
        if flip is None:
            flip = torch.rand(B, generator=generator, device=device) < 0.5  # (B,)
        return torch.where(flip[:, None, None, None], images.flip(3), images)  # (B, C, H, W)
    if offsets is None:
        dy = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=device)  # (B,) top of the crop window
        dx = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=device)  # (B,) left of the crop window
    else:
        dy, dx = offsets  # (B,), (B,)
    rows = dy[:, None] + torch.arange(H, device=device)  # (B, H) rows of the padded image to read
    cols = dx[:, None] + torch.arange(W, device=device)  # (B, W)
    if hflip:
        if flip is None:
            flip = torch.rand(B, generator=generator, device=device) < 0.5  # (B,)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # (B, W) reading right-to-left flips
    if pad_mode == "reflect":
        # Read the mirrored pixels straight from the unpadded images: no padded copy of the batch.
        source, rows, cols = images, _reflect(rows - p, H), _reflect(cols - p, W)
    else:
        source = F.pad(images, (p, p, p, p)) if p else images  # (B, C, H+2p, W+2p), zeros around
    return source[
        torch.arange(B, device=device)[:, None, None, None],
        torch.arange(C, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (B, C, H, W)


def jitter_draws(n: int, brightness: float, contrast: float, generator: torch.Generator,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's photometric draws for n images, made on the device: (shift (n,), scale (n,)),
    shift uniform in [−brightness, brightness] and scale in [1 − contrast, 1 + contrast]."""
    shift = (torch.rand(n, generator=generator, device=device) * 2 - 1) * brightness  # (n,)
    scale = 1 + (torch.rand(n, generator=generator, device=device) * 2 - 1) * contrast  # (n,)
    return shift, scale


def jitter_batch(inputs: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(inputs + shift) · scale, one shift and one scale per image of the normalised batch (B, C, H, W)."""
    return (inputs + shift.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1)  # (B, C, H, W)


def alternating_flips(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """(n,) bool: which of the n training images to mirror in `epoch`. A random half (fixed by the
    seed) on even epochs and the other half on odd ones, so every image is seen both ways in any two
    consecutive epochs (airbench's alternating flip, worth about an epoch of random flips)."""
    first = torch.rand(n, generator=torch.Generator().manual_seed(seed + 7_919)) < 0.5  # (n,) on the CPU
    return (first ^ bool(epoch % 2)).to(device)


def normalize(
    images: torch.Tensor, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32, memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> (x/255 - mean)/std in `dtype` and `memory_format`, on images.device.

    `mean`/`std` may be lists, or (1, C, 1, 1) float32 tensors on the images' device made once by
    `channel_tensors` (the training loop's way: no tensor built from host values per step).
    """
    mean_t, std_t = channel_tensors(mean, std, images.device)
    # Convert and scale in (B, C, H, W) order, then change layout once at the end: on the CPU an
    # elementwise op broadcasting (1, C, 1, 1) over a channels_last tensor runs ~10x slower (its
    # innermost dimension is just C = 3), and so does converting uint8 straight into channels_last.
    scale, shift = std_t.mul(255).reciprocal_(), mean_t / std_t  # (1, C, 1, 1): x·scale − shift
    x = images.to(torch.float32, memory_format=torch.contiguous_format).mul_(scale).sub_(shift)  # (B, C, H, W)
    x = x.contiguous(memory_format=memory_format)  # (B, C, H, W) in the model's layout
    return x.to(dtype)


def channel_tensors(mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) float32 mean and std on `device` (tensors already there pass through)."""
    if not isinstance(mean, torch.Tensor):
        mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if not isinstance(std, torch.Tensor):
        std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std
