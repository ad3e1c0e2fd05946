"""bearpaw/pytorch-classification's CIFAR Wide ResNet (Zagoruyko & Komodakis 2016): pre-activation
BasicBlocks, depth 6n+4, widths 16k/32k/64k, dropout between a block's two convs.
WRN-28-10 (drop 0.3) has 36.48M params with a 10-class head.

Key names are bearpaw's (``block1.layer.0.conv1``, ``convShortcut``, ``bn1``, ``fc``). As in bearpaw, a
block whose width changes applies its BN-ReLU to the input itself, so the 1×1 ``convShortcut`` reads the
activated input, while a same-width block adds the raw input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.layers import bearpaw_init
from prunekit.models.registry import register_model


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = drop
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(activated) + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop)
                for i in range(nb_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """bearpaw's `WideResNet(depth, num_classes, widen_factor, dropRate)`."""

    def __init__(
        self,
        depth: int = 28,
        num_classes: int = 10,
        widen_factor: int = 10,
        drop: float = 0.3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"Wide ResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...); got {depth}")
        if widen_factor < 1 or not 0.0 <= drop < 1.0:
            raise ConfigError(
                f"Wide ResNet needs widen_factor >= 1 and drop in [0, 1); got {widen_factor}, {drop}"
            )
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        # bearpaw's avg_pool2d(8) + view(-1, nChannels): the same on 32×32 inputs; adaptive also fits 28×28,
        # and a flatten keeps the classifier's input width free to shrink when the last stage is pruned.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        bearpaw_init(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model(
    "wrn28_10",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR Wide ResNet-28-10 (dropout 0.3 between a block's convs)",
)
def wrn28_10(num_classes: int = 10, in_channels: int = 3, drop: float = 0.3) -> WideResNet:
    return WideResNet(28, num_classes, 10, drop, in_channels)
