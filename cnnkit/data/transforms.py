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


def augment_batch(
    images: torch.Tensor, *, crop_padding: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random zero-padded crop and random horizontal flip (p=0.5), each image its own draw.

    The random numbers come from `generator` on the CPU (crop offsets first, then flips), so the
    result is identical on every device. All images are gathered in one indexing op.
    """
    if crop_padding <= 0 and not hflip:
        return images
    B, C, H, W = images.shape
    p = max(crop_padding, 0)
    dy = torch.randint(0, 2 * p + 1, (B,), generator=generator)  # (B,) top of the crop window
    dx = torch.randint(0, 2 * p + 1, (B,), generator=generator)  # (B,) left of the crop window
    rows = dy[:, None] + torch.arange(H)  # (B, H) rows of the padded image to read
    cols = dx[:, None] + torch.arange(W)  # (B, W)
    if hflip:
        flip = torch.rand(B, generator=generator) < 0.5  # (B,)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # (B, W) reading right-to-left flips
    device = images.device
    padded = F.pad(images, (p, p, p, p)) if p else images  # (B, C, H+2p, W+2p), zeros around
    return padded[
        torch.arange(B, device=device)[:, None, None, None],
        torch.arange(C, device=device)[None, :, None, None],
        rows.to(device)[:, None, :, None],
        cols.to(device)[:, None, None, :],
    ]  # (B, C, H, W)


def normalize(
    images: torch.Tensor, mean: list[float], std: list[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> (x/255 - mean)/std in `dtype`, on images.device."""
    # Computed in float32 even for half dtypes, then cast once.
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    x = images.to(torch.float32).div_(255).sub_(mean_t).div_(std_t)  # (B, C, H, W)
    return x.to(dtype)
