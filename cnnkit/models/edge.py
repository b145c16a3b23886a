"""Seed 000's edge-detector toy, and `Corr2d`, the conv layer built on the from-scratch `ops.corr2d`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cnnkit import ops
from cnnkit.shapes import SHAPE_RULES, conv_row


class Corr2d(nn.Module):
    """A conv layer built on the from-scratch `ops.corr2d` (the seed's hand-made Conv2D, batched)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, bias: bool = True):
        super().__init__()
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = (1, 1), (0, 0), (1, 1), 1
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Same initialisation as nn.Conv2d, so both backends start from comparable kernels.
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x):  # (B, C_in, H, W)
        return ops.corr2d(x, self.weight, self.bias)  # (B, C_out, H−kH+1, W−kW+1)


SHAPE_RULES[Corr2d] = lambda name, m, shape, rf, jump: conv_row(
    name, shape, m.out_channels, m.kernel_size, bias=m.bias is not None, rf=rf, jump=jump, type_name="Corr2d")


class EdgeDetector(nn.Module):
    """Seed 000's toy: one 1×2 kernel, no bias, learned so that conv(X) = corr2d(X, [[1, −1]])."""

    def __init__(self, in_channels: int = 1, backend: Literal["torch", "scratch"] = "torch"):
        super().__init__()
        layers = {"torch": lambda: nn.Conv2d(in_channels, 1, kernel_size=(1, 2), bias=False),
                  "scratch": lambda: Corr2d(in_channels, 1, kernel_size=(1, 2), bias=False)}
        if backend not in layers:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of: {', '.join(layers)}")
        self.conv = layers[backend]()

    def forward(self, x):  # (B, C, H, W)
        return self.conv(x)  # (B, 1, H, W−1)

    @property
    def kernel(self) -> torch.Tensor:
        return self.conv.weight.detach()[0, 0]  # (1, 2)
