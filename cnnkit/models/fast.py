"""A network built for time-to-accuracy, in the style the fast CIFAR-10 literature converged on.

After Keller Jordan's airbench ("94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498)
and tysam-code's hlb-CIFAR10: a frozen 2×2 convolution that whitens image patches (its filters
are the eigenvectors of the training patches' covariance, both signs, so GELU keeps all the
information), then three groups of conv → max-pool → BatchNorm → GELU → conv → BatchNorm → GELU,
a global max-pool and a linear head whose output is scaled down by the width.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.common import spatial_size
from cnnkit.shapes import SHAPE_RULES, Pair, conv2d_hw, pool2d_hw


class Conv3x3(nn.Conv2d):
    """3×3, stride 1, 'same' padding, no bias (BatchNorm follows). Starts as an identity on the
    first in-channels (Dirac) plus torch's default noise: a deep net that starts near the identity
    trains in fewer steps."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data  # (O, I, 3, 3)
        nn.init.dirac_(w[: min(w.shape[0], w.shape[1])])


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen scale (γ = 1): only the shift is learned. `momentum` is the weight of
    the old running statistics (0.6, as in airbench), i.e. torch's momentum = 1 − momentum."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float):
        super().__init__()
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(out_channels, bn_momentum)
        self.act1 = nn.GELU()
        self.conv2 = Conv3x3(out_channels, out_channels)
        self.norm2 = BatchNorm(out_channels, bn_momentum)
        self.act2 = nn.GELU()

    def forward(self, x):  # (B, C_in, H, W)
        x = self.conv1(x)  # (B, C_out, H, W)
        x = self.pool(x)  # (B, C_out, H/2, W/2): pooling before the norm halves its cost
        x = self.norm1(x)
        x = self.act1(x)
        x = self.conv2(x)  # (B, C_out, H/2, W/2)
        x = self.norm2(x)
        return self.act2(x)


class Scale(nn.Module):
    """Multiply by a constant: the head's output over the width, so logits start near unit size."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.4g}"


SHAPE_RULES[Scale] = SHAPE_RULES[nn.Identity]  # same shape out as in


class FastNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32),
                 widths: tuple[int, int, int] = (64, 256, 256), whiten_kernel: int = 2, bn_momentum: float = 0.6):
        super().__init__()
        # Range checks, as "key: what it needs, got X" (the registry makes them one ConfigError line).
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths: need three positive channel counts, got {list(widths)}")
        if whiten_kernel < 1:
            raise ValueError(f"whiten_kernel: need a kernel of at least 1 pixel, got {whiten_kernel}")
        if not 0 <= bn_momentum <= 1:
            raise ValueError(f"bn_momentum: the weight of the old running statistics, in [0, 1], got {bn_momentum}")
        hw = spatial_size("fast", input_size, [("whiten", conv2d_hw, whiten_kernel), ("group1.pool", pool2d_hw, 2),
                                               ("group2.pool", pool2d_hw, 2), ("group3.pool", pool2d_hw, 2)])
        whiten_width = 2 * in_channels * whiten_kernel**2  # each eigenvector with both signs
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel, bias=True)
        self.whiten.weight.requires_grad_(False)  # set once from the data by `init_from_data`
        self.act = nn.GELU()
        self.group1 = ConvGroup(whiten_width, widths[0], bn_momentum)
        self.group2 = ConvGroup(widths[0], widths[1], bn_momentum)
        self.group3 = ConvGroup(widths[1], widths[2], bn_momentum)
        self.pool = nn.MaxPool2d(tuple(hw))  # global max over what is left (3×3 for 32×32)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = Scale(1 / widths[2])
        with torch.no_grad():
            self.head.weight.div_(self.head.weight.std())  # unit-variance head; `scale` sizes the logits

    def forward(self, x):  # (B, 3, 32, 32)
        x = self.whiten(x)  # (B, 24, 31, 31)
        x = self.act(x)
        x = self.group1(x)  # (B, w1, 15, 15)
        x = self.group2(x)  # (B, w2, 7, 7)
        x = self.group3(x)  # (B, w3, 3, 3)
        x = self.pool(x)  # (B, w3, 1, 1)
        x = self.flatten(x)  # (B, w3)
        x = self.head(x)  # (B, num_classes)
        return self.scale(x)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from normalised training images (B, C, H, W): the eigenvectors of the
        k×k patch covariance, each divided by √(its eigenvalue + eps), with both signs.

        The trainer calls `init_from_data` on a fresh model (not on resume) with the first
        `train.data_init_images` training images, as airbench does with 5,000."""
        c = images.shape[1]
        k = self.whiten.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # (B, C, H−k+1, W−k+1, k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)  # (P, C·k·k)
        covariance = patches.T @ patches / len(patches)  # (C·k·k, C·k·k)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending; columns are vectors
        filters = eigenvectors.T.reshape(-1, c, k, k) / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
        self.whiten.weight.copy_(torch.cat((filters, -filters)).to(self.whiten.weight))
