"""VGG-11 and VGG-16 with BatchNorm, CIFAR style, as kuangliu/pytorch-cifar writes them.

Simonyan & Zisserman 2014 ("Very Deep Convolutional Networks for Large-Scale Image Recognition",
arXiv 1409.1556), configurations A and D: 3×3 convs (padding 1) each followed by BatchNorm (Ioffe
& Szegedy 2015) and ReLU, five 2×2 max-pools. For 32×32 inputs the five pools leave 512×1×1, so the
three big ImageNet linear layers become one Linear(512, num_classes). No residuals, no shortcuts.

Two changes so that any input size works and 32×32 is untouched: the pools round up (ceil_mode,
so 28×28 goes 14, 7, 4, 2, 1 instead of running out at the fifth pool), and a global average pool
before the head takes whatever is left to 1×1 (at 32×32 the map already is 1×1: kuangliu's
AvgPool2d(1)).
"""

from __future__ import annotations

from torch import nn

# Channels of each 3×3 conv; "M" a 2×2 max-pool. Configurations A (11 weight layers) and D (16).
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, config: str, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):  # (B, C, 32, 32)
        x = self.features(x)  # (B, 512, 1, 1)
        x = self.pool(x)  # (B, 512, 1, 1)
        x = self.flatten(x)  # (B, 512)
        return self.fc(x)  # (B, num_classes)


def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> VGG:
    return VGG("vgg11", in_channels, num_classes)


def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> VGG:
    return VGG("vgg16", in_channels, num_classes)
