"""The BatchNorm CNN of seed 003."""

from __future__ import annotations

from torch import nn

from cnnkit.models.common import spatial_size
from cnnkit.shapes import Pair, conv2d_hw, pool2d_hw


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
        hw = spatial_size("bn_cnn", input_size, [("layer1.0", conv2d_hw, 3), ("pool1", pool2d_hw, 2),
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
