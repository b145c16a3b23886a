"""LeNet: the seed's CIFAR-10 classifier (article 004)."""

from __future__ import annotations

from torch import nn

from cnnkit.models.common import spatial_size
from cnnkit.shapes import Pair, conv2d_hw, pool2d_hw


class LeNet(nn.Module):
    """The seed's CIFAR-10 classifier (article 004): two conv+pool stages, three linear layers."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32)):
        super().__init__()
        hw = spatial_size("lenet", input_size, [("conv1", conv2d_hw, 3), ("pool1", pool2d_hw, 2),
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
