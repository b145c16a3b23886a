"""The models, in a name → entry registry (timm style); one file per family.

Every constructor takes `in_channels`, `num_classes` and `input_size` where they apply; flatten
sizes come from `cnnkit.shapes`, never hard-coded, so a model fits any input it can take. The next
model is one new file here plus one line in MODELS.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.models.bn_cnn import BNCNN, ConvBNReLU
from cnnkit.models.edge import Corr2d, EdgeDetector
from cnnkit.models.fast import FastNet
from cnnkit.models.lenet import LeNet
from cnnkit.shapes import Pair

__all__ = ["MODELS", "BNCNN", "ConvBNReLU", "Corr2d", "EdgeDetector", "FastNet", "LeNet", "ModelEntry", "build_model",
           "count_params"]


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    task: str  # a cnnkit.tasks.TASKS name: "classify" (cross-entropy, accuracy) or "edge" (MSE vs the edge map)
    summary: str
    channels: int = 3  # the input channels `cnnkit models` counts parameters at


MODELS: dict[str, ModelEntry] = {
    "lenet": ModelEntry(LeNet, "classify", "LeNet-style CIFAR-10 net of seed 004 (conv6-conv16-fc120-84)"),
    "bn_cnn": ModelEntry(BNCNN, "classify", "BatchNorm CNN of seed 003 (conv25-conv50-fc1024-128)"),
    "edge": ModelEntry(EdgeDetector, "edge", "edge-detector toy of seed 000: one 1×2 kernel, no bias", channels=1),
    "fast": ModelEntry(FastNet, "classify", "speed net after airbench: 2×2 whitening conv, 3 conv-pool-BN-GELU groups"),
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
