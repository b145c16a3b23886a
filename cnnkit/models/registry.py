"""The registry of built-in models: a name → entry dict (timm style), one file per family.

A new model is one file in cnnkit/models/ and one line here. Names outside this dict reach other
sources (a user's module, torchvision, timm) through cnnkit.models.external.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnkit.models.bn_cnn import BNCNN
from cnnkit.models.edge import EdgeDetector
from cnnkit.models.fast import FastNet
from cnnkit.models.lenet import LeNet


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


