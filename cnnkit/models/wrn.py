"""Wide ResNets, WRN-d-k: Zagoruyko & Komodakis 2016 ("Wide Residual Networks", arXiv 1605.07146;
szagoruyko/wide-residual-networks, and xternalz/WideResNet-pytorch's port).

A 3×3 conv to 16 channels, then three groups of n = (d − 4)/6 pre-activation blocks
(BN-ReLU-conv3×3-BN-ReLU-dropout-conv3×3, He et al. 2016) with 16k, 32k and 64k channels on
32×32, 16×16 and 8×8 maps, a final BN-ReLU, a global average pool and a linear head. Shortcuts: the
identity, and where a block changes the shape (the first of each group) a 1×1 conv of the
pre-activated input, no BN (option B as the paper's code has it). Dropout between the two convs is
the paper's regulariser (0.3 for its CIFAR results); off by default.
"""

from __future__ import annotations

from torch import nn


class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = None  # the identity of x, unless the block changes the shape
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x):  # (B, C_in, H, W)
        out = self.bn1(x)
        out = self.relu1(out)
        shortcut = x if self.shortcut is None else self.shortcut(out)  # (B, C_out, H/s, W/s)
        out = self.conv1(out)  # (B, C_out, H/s, W/s)
        out = self.bn2(out)
        out = self.relu2(out)
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(out)  # (B, C_out, H/s, W/s)
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, depth: int = 28, widen_factor: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth: need 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor: need a positive integer, got {widen_factor}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: need a probability in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.layer1 = self._group(widths[0], widths[1], n, 1, dropout)
        self.layer2 = self._group(widths[1], widths[2], n, 2, dropout)
        self.layer3 = self._group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])  # the last block's add is not normalised: do it once here
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)  # avg_pool2d(8) at 32×32; any input size works
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # as the paper's code: He init (fan-out) for convs, zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _group(in_channels: int, out_channels: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(WideBlock(in_channels, out_channels, stride, dropout),
                             *(WideBlock(out_channels, out_channels, 1, dropout) for _ in range(n - 1)))

    def forward(self, x):  # (B, C, 32, 32)
        x = self.conv1(x)  # (B, 16, 32, 32)
        x = self.layer1(x)  # (B, 16k, 32, 32)
        x = self.layer2(x)  # (B, 32k, 16, 16)
        x = self.layer3(x)  # (B, 64k, 8, 8)
        x = self.bn(x)
        x = self.relu(x)
        x = self.pool(x)  # (B, 64k, 1, 1)
        x = self.flatten(x)  # (B, 64k)
        return self.fc(x)  # (B, num_classes)


# The registered nets: WideResNet with their depth and width as defaults (still model.kwargs to change).
def wrn16_8(in_channels: int = 3, num_classes: int = 10, depth: int = 16, widen_factor: int = 8,
            dropout: float = 0.0) -> WideResNet:
    return WideResNet(in_channels, num_classes, depth, widen_factor, dropout)


def wrn28_10(in_channels: int = 3, num_classes: int = 10, depth: int = 28, widen_factor: int = 10,
             dropout: float = 0.0) -> WideResNet:
    return WideResNet(in_channels, num_classes, depth, widen_factor, dropout)
