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
from cnnkit.models.resnet import PreActResNet18, ResNet18
from cnnkit.models.resnet9 import ResNet9
from cnnkit.models.resnet_cifar import resnet20, resnet32, resnet44, resnet56, resnet110
from cnnkit.models.vgg import vgg11_bn, vgg16_bn
from cnnkit.models.wrn import wrn16_8, wrn28_10


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
    # The classic CIFAR architectures (the papers' layouts; parameter counts in tests/test_classics.py).
    "resnet20": ModelEntry(resnet20, "classify", "CIFAR ResNet-20 of He et al. 2015 (16/32/64, option A shortcuts)"),
    "resnet32": ModelEntry(resnet32, "classify", "CIFAR ResNet-32 of He et al. 2015 (16/32/64, option A shortcuts)"),
    "resnet44": ModelEntry(resnet44, "classify", "CIFAR ResNet-44 of He et al. 2015 (16/32/64, option A shortcuts)"),
    "resnet56": ModelEntry(resnet56, "classify", "CIFAR ResNet-56 of He et al. 2015 (16/32/64, option A shortcuts)"),
    "resnet110": ModelEntry(resnet110, "classify", "CIFAR ResNet-110 of He et al. 2015 (16/32/64, option A)"),
    "resnet18": ModelEntry(ResNet18, "classify", "ResNet-18, 3×3 stem, no max-pool (kuangliu/pytorch-cifar)"),
    "preact_resnet18": ModelEntry(PreActResNet18, "classify",
                                  "PreAct-ResNet-18, He et al. 2016 (kuangliu/pytorch-cifar)"),
    "resnet9": ModelEntry(ResNet9, "classify", "David Page's DAWNBench ResNet-9 (myrtle.ai, cifar10-fast)"),
    "vgg11_bn": ModelEntry(vgg11_bn, "classify", "VGG-11 with BatchNorm, CIFAR head (kuangliu/pytorch-cifar)"),
    "vgg16_bn": ModelEntry(vgg16_bn, "classify", "VGG-16 with BatchNorm, CIFAR head (kuangliu/pytorch-cifar)"),
    "wrn16_8": ModelEntry(wrn16_8, "classify", "Wide ResNet WRN-16-8 of Zagoruyko & Komodakis 2016 (pre-act)"),
    "wrn28_10": ModelEntry(wrn28_10, "classify", "Wide ResNet WRN-28-10 of Zagoruyko & Komodakis 2016 (pre-act)"),
}


