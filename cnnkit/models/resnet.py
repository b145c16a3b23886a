"""ResNet-18 and PreAct-ResNet-18 with the CIFAR stem, as kuangliu/pytorch-cifar writes them.

ResNet-18: He et al. 2015 ("Deep Residual Learning for Image Recognition", arXiv 1512.03385), the
ImageNet net's BasicBlocks [2, 2, 2, 2] with 64, 128, 256, 512 channels, but the 7×7 stride-2 stem
and its max-pool replaced by one 3×3 stride-1 conv, so 32×32 maps reach layer1 whole (556M MACs
per 32×32 image, 11.17M parameters). Shortcuts are option B: the identity, and a 1×1 conv + BN
where a block changes the shape.

PreAct-ResNet-18: He et al. 2016 ("Identity Mappings in Deep Residual Networks", arXiv 1603.05027):
BN-ReLU before each conv, nothing after the add, so the shortcut path is a clean identity. Where the
shape changes the shortcut is a 1×1 conv of the pre-activated input (no BN: the block's BN-ReLU
already normalised it). As in kuangliu's file there is no final BN-ReLU before the pooling.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def shortcut_b(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Option B: a 1×1 conv + BN where a block changes the shape (resnet_cifar's option A is parameter-free)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU (He et al. 2015's Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 shortcut: Callable[[int, int, int], nn.Module] = shortcut_b):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        change = stride != 1 or in_channels != out_channels
        self.shortcut = shortcut(in_channels, out_channels, stride) if change else None  # None: the identity

    def forward(self, x):  # (B, C_in, H, W)
        out = self.conv1(x)  # (B, C_out, H/s, W/s)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)  # (B, C_out, H/s, W/s)
        out = self.bn2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)  # (B, C_out, H/s, W/s)
        out = out + shortcut
        return self.relu2(out)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3, plus the shortcut; nothing after the add."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = None  # the identity (of x itself, not of its activation), unless the shape changes
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x):  # (B, C_in, H, W)
        out = self.bn1(x)
        out = self.relu1(out)  # ReLU(inplace) writes into bn1's output, never into x
        shortcut = x if self.shortcut is None else self.shortcut(out)  # (B, C_out, H/s, W/s)
        out = self.conv1(out)  # (B, C_out, H/s, W/s)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv2(out)  # (B, C_out, H/s, W/s)
        return out + shortcut


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stem, four stages of two blocks (64, 128, 256, 512), global pool, linear."""

    block: type[nn.Module] = BasicBlock
    stem_norm = True  # conv-BN-ReLU stem; the pre-activation net leaves that to its first block

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64) if self.stem_norm else None
        self.relu = nn.ReLU(inplace=True) if self.stem_norm else None
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        # kuangliu's avg_pool2d(4) is the global pool at 32×32; adaptive, any input size works.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def _stage(self, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(self.block(in_channels, out_channels, stride), self.block(out_channels, out_channels))

    def forward(self, x):  # (B, C, 32, 32)
        x = self.conv1(x)  # (B, 64, 32, 32)
        if self.stem_norm:
            x = self.bn1(x)
            x = self.relu(x)
        x = self.layer1(x)  # (B, 64, 32, 32)
        x = self.layer2(x)  # (B, 128, 16, 16)
        x = self.layer3(x)  # (B, 256, 8, 8)
        x = self.layer4(x)  # (B, 512, 4, 4)
        x = self.pool(x)  # (B, 512, 1, 1)
        x = self.flatten(x)  # (B, 512)
        return self.fc(x)  # (B, num_classes)


class PreActResNet18(ResNet18):
    """ResNet18 with PreActBlocks and a bare conv stem (11.17M parameters, as kuangliu's)."""

    block = PreActBlock
    stem_norm = False
