"""The models, in a name → constructor registry (timm style).

Every constructor takes `in_channels`, `num_classes` and `input_size` where they apply; flatten
sizes come from `cnnkit.shapes`, never hard-coded, so a model fits any input it can take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnkit import ops
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.shapes import SHAPE_RULES, Pair, conv2d_hw, conv_row, pool2d_hw


def _spatial_size(model: str, input_size: Pair, steps: list[tuple[str, Callable[..., Pair], int]]) -> Pair:
    """(H, W) after a chain of (layer name, conv2d_hw or pool2d_hw, kernel) steps; the layer that cannot
    apply is named, so `lenet` on 8×8 says which layer runs out of pixels."""
    hw = tuple(input_size)
    for name, fn, kernel in steps:
        try:
            hw = fn(hw, kernel)
        except ShapeError as exc:
            size = "×".join(str(d) for d in input_size)
            raise ShapeError(f"{model} on {size} input: {name} gets {hw[0]}×{hw[1]}: {exc}") from None
    return hw  # type: ignore[return-value]


class LeNet(nn.Module):
    """The seed's CIFAR-10 classifier (article 004): two conv+pool stages, three linear layers."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32)):
        super().__init__()
        hw = _spatial_size("lenet", input_size, [("conv1", conv2d_hw, 3), ("pool1", pool2d_hw, 2),
                                                 ("conv2", conv2d_hw, 3), ("pool2", pool2d_hw, 2)])
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=3)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * hw[0] * hw[1], 120)  # 16·6·6 = 576 for 32×32
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):  # (B, C, 32, 32)
        x = self.conv1(x)  # (B, 6, 30, 30)
        x = self.relu1(x)
        x = self.pool1(x)  # (B, 6, 15, 15)
        x = self.conv2(x)  # (B, 16, 13, 13)
        x = self.relu2(x)
        x = self.pool2(x)  # (B, 16, 6, 6)
        x = self.flatten(x)  # (B, 576)
        x = self.fc1(x)  # (B, 120)
        x = self.relu3(x)
        x = self.fc2(x)  # (B, 84)
        x = self.relu4(x)
        return self.fc3(x)  # (B, num_classes)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class BNCNN(nn.Module):
    """The BatchNorm CNN of seed 003. The seed hard-codes 50·5·5 (right only for 1×28×28); here the
    flatten size is computed: 50·6·6 = 1800 for 3×32×32, 50·5·5 = 1250 for 1×28×28."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32)):
        super().__init__()
        hw = _spatial_size("bn_cnn", input_size, [("layer1.0", conv2d_hw, 3), ("pool1", pool2d_hw, 2),
                                                  ("layer2.0", conv2d_hw, 3), ("pool2", pool2d_hw, 2)])
        self.layer1 = ConvBNReLU(in_channels, 25)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer2 = ConvBNReLU(25, 50)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc = nn.Sequential(
            nn.Linear(50 * hw[0] * hw[1], 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):  # (B, C, 32, 32)
        x = self.layer1(x)  # (B, 25, 30, 30)
        x = self.pool1(x)  # (B, 25, 15, 15)
        x = self.layer2(x)  # (B, 50, 13, 13)
        x = self.pool2(x)  # (B, 50, 6, 6)
        x = self.flatten(x)  # (B, 1800)
        return self.fc(x)  # (B, num_classes)


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

    def __init__(self, in_channels: int = 1, backend: str = "torch"):
        super().__init__()
        layers = {"torch": lambda: nn.Conv2d(in_channels, 1, kernel_size=(1, 2), bias=False),
                  "scratch": lambda: Corr2d(in_channels, 1, kernel_size=(1, 2), bias=False)}
        if backend not in layers:
            raise ConfigError(f"model.kwargs.backend: unknown backend {backend!r}; choose one of: {', '.join(layers)}")
        self.conv = layers[backend]()

    def forward(self, x):  # (B, C, H, W)
        return self.conv(x)  # (B, 1, H, W−1)

    @property
    def kernel(self) -> torch.Tensor:
        return self.conv.weight.detach()[0, 0]  # (1, 2)


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    task: str  # "classify" (cross-entropy, accuracy) or "edge" (MSE against the true edge map)
    summary: str


MODELS: dict[str, ModelEntry] = {
    "lenet": ModelEntry(LeNet, "classify", "LeNet-style CIFAR-10 net of seed 004 (conv6-conv16-fc120-84)"),
    "bn_cnn": ModelEntry(BNCNN, "classify", "BatchNorm CNN of seed 003 (conv25-conv50-fc1024-128)"),
    "edge": ModelEntry(EdgeDetector, "edge", "edge-detector toy of seed 000: one 1×2 kernel, no bias"),
}


def build_model(name: str, *, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32),
                **kwargs: Any) -> nn.Module:
    """Build a registered model, passing only the size arguments its constructor accepts."""
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    build = MODELS[name].build
    accepted = inspect.signature(build).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        extra = [p for p in accepted if p not in ("in_channels", "num_classes", "input_size")]
        raise ConfigError(
            f"model.kwargs: {', '.join(unknown)} not accepted by model {name!r}; "
            f"it takes: {', '.join(extra) or 'no extra arguments'}"
        )
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "input_size": tuple(input_size)}
    return build(**{k: v for k, v in sizes.items() if k in accepted}, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
