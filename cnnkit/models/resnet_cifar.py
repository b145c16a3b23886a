"""The CIFAR-10 ResNets of He et al. 2015 ("Deep Residual Learning for Image Recognition",
arXiv 1512.03385, section 4.2): 6n+2 layers, 3×3 convs on 32×32, 16×16 and 8×8 maps with 16, 32 and
64 channels, BatchNorm, a global average pool and a linear head.

Shortcuts are option A, the paper's CIFAR choice: the identity, and where a stage halves the map
and doubles the channels, the input subsampled by 2 and zero-padded with the new channels. So the
shortcuts add no parameters and every net has the paper's count (resnet20: 0.27M ... resnet110:
1.7M). The layout follows akamaster/pytorch_resnet_cifar10, which reproduces the paper's errors.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cnnkit.models.resnet import BasicBlock  # with option A shortcuts here
from cnnkit.shapes import SHAPE_RULES, pool_row


class ShortcutA(nn.Module):
    """Option A: keep every `stride`-th pixel, then zero-pad the channels (half before, half after)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x):  # (B, C_in, H, W)
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, ⌈H/s⌉, ⌈W/s⌉)
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))  # (B, C_out, ⌈H/s⌉, ⌈W/s⌉)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _shortcut_a_rule(name, m, shape, rf, jump):
    # Subsampling by s is a 1×1 pool with stride s: ⌊(H − 1)/s⌋ + 1 = ⌈H/s⌉, the same arithmetic.
    row = pool_row(name, shape, "max", 1, m.stride, rf=rf, jump=jump)
    row.type, row.output, row.kernel_shape = "ShortcutA", (m.out_channels, *row.output[1:]), None
    return row


SHAPE_RULES[ShortcutA] = _shortcut_a_rule  # `cnnkit shapes` computes its row like any pool's


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for CIFAR: a 3×3 conv to 16 channels, then three stages of n blocks each."""

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage: need at least 1 (depth 6n+2 ≥ 8), got {blocks_per_stage}")
        widths = (16, 32, 64)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[0], blocks_per_stage, stride=1)
        self.layer2 = self._stage(widths[0], widths[1], blocks_per_stage, stride=2)
        self.layer3 = self._stage(widths[1], widths[2], blocks_per_stage, stride=2)
        # Global pooling: any input size works (3×3 convs with padding 1 never run out of pixels).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            # He init (the paper's reference [13]), for the fan-out of ReLU layers as fb.resnet.torch.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_channels, out_channels, stride, shortcut=ShortcutA),
                             *(BasicBlock(out_channels, out_channels) for _ in range(n - 1)))

    def forward(self, x):  # (B, C, 32, 32)
        x = self.conv1(x)  # (B, 16, 32, 32)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)  # (B, 16, 32, 32)
        x = self.layer2(x)  # (B, 32, 16, 16)
        x = self.layer3(x)  # (B, 64, 8, 8)
        x = self.pool(x)  # (B, 64, 1, 1)
        x = self.flatten(x)  # (B, 64)
        return self.fc(x)  # (B, num_classes)


# The registered depths: n = (depth − 2) / 6 blocks per stage. No model.kwargs: the name is the net.
def resnet20(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(3, in_channels, num_classes)


def resnet32(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(5, in_channels, num_classes)


def resnet44(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(7, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(9, in_channels, num_classes)


def resnet110(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(18, in_channels, num_classes)
