"""ResNet-9: David Page's DAWNBench CIFAR-10 net ("How to train your ResNet", myrtle.ai, 2018;
davidcpage/cifar10-fast), 94% in 24 epochs.

prep conv 64 → layer1 conv 128 + max-pool + a residual of two conv-BN-ReLU → layer2 conv 256 +
max-pool → layer3 conv 512 + max-pool + residual → global max-pool → linear (no bias), the logits
scaled by 0.125. Every conv is 3×3 with padding 1, no bias, then BN and ReLU. The residuals add
the identity of a shape-preserving branch, so there are no shortcut convs (no option to choose).
The final pool is adaptive: at 32×32 it is Page's MaxPool2d(4), and other input sizes work too.
"""

from __future__ import annotations

from torch import nn

from cnnkit.models.common import spatial_size
from cnnkit.models.fast import Scale
from cnnkit.shapes import Pair, pool2d_hw


class ConvBN(nn.Sequential):
    """Page's conv_bn: conv3×3 (no bias: BN's shift is the bias) → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + conv_bn(conv_bn(x)): two shape-preserving conv-BN-ReLUs around an identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.res1 = ConvBN(channels, channels)
        self.res2 = ConvBN(channels, channels)

    def forward(self, x):  # (B, C, H, W)
        out = self.res1(x)  # (B, C, H, W)
        out = self.res2(out)  # (B, C, H, W)
        return x + out


class Stage(nn.Sequential):
    """conv_bn to the new width, halve the map with a max-pool, then a residual if asked for."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        if residual:
            self.residual = Residual(out_channels)


class ResNet9(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32),
                 scale: float = 0.125):
        super().__init__()
        # Three 2×2 pools: the map must keep at least a pixel (4×4 input: layer3.pool gets 1×1, an error).
        spatial_size("resnet9", input_size, [("layer1.pool", pool2d_hw, 2), ("layer2.pool", pool2d_hw, 2),
                                             ("layer3.pool", pool2d_hw, 2)])
        if scale <= 0:
            raise ValueError(f"scale: need a positive factor for the logits, got {scale}")
        self.prep = ConvBN(in_channels, 64)
        self.layer1 = Stage(64, 128, residual=True)
        self.layer2 = Stage(128, 256, residual=False)
        self.layer3 = Stage(256, 512, residual=True)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes, bias=False)
        # Page's Mul(0.125): the head's logits start small, so the first steps do not saturate the softmax.
        self.scale = Scale(scale)

    def forward(self, x):  # (B, C, 32, 32)
        x = self.prep(x)  # (B, 64, 32, 32)
        x = self.layer1(x)  # (B, 128, 16, 16)
        x = self.layer2(x)  # (B, 256, 8, 8)
        x = self.layer3(x)  # (B, 512, 4, 4)
        x = self.pool(x)  # (B, 512, 1, 1)
        x = self.flatten(x)  # (B, 512)
        x = self.fc(x)  # (B, num_classes)
        return self.scale(x)
