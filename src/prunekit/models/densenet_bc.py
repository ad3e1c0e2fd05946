"""bearpaw/pytorch-classification's CIFAR DenseNet-BC (Huang et al. 2017): bottleneck layers
(BN-ReLU-1×1 conv to 4k, BN-ReLU-3×3 conv to k, concatenated after the input), transitions that halve the
channels (compression 2) and average-pool 2×2, three dense blocks of (L-4)/6 layers each.
DenseNet-BC (L=100, k=12) has 0.77M and (L=190, k=40) 25.62M params with a 10-class head.

Key names are bearpaw's (``dense1.0.conv1``, ``trans1.conv1``, ``bn``, ``fc``). bearpaw's bottleneck reuses
one ``relu`` module twice; here each use has its own (``relu1``, ``relu2``), since hooks tell layers apart by
module. (The zoo's `densenet40` is HRank's DenseNet-40 without bottlenecks; see `models.densenet`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.layers import bearpaw_init
from prunekit.models.registry import register_model


class DenseBottleneck(nn.Module):
    def __init__(self, inplanes: int, growth: int, drop: float = 0.0, expansion: int = 4) -> None:
        super().__init__()
        planes = expansion * growth
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, growth, kernel_size=3, padding=1, bias=False)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        return torch.cat((x, out), 1)


class BCTransition(nn.Module):
    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    """bearpaw's `DenseNet(depth, block=Bottleneck, dropRate, num_classes, growthRate, compressionRate)`."""

    def __init__(
        self,
        depth: int = 100,
        growth: int = 12,
        num_classes: int = 10,
        in_channels: int = 3,
        compression: int = 2,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"DenseNet-BC depth must be 6n+4 (10, 40, 100, 190, ...); got {depth}")
        if growth < 1 or compression < 1:
            raise ConfigError(
                f"DenseNet-BC needs growth >= 1 and compression >= 1; got {growth}, {compression}"
            )
        n = (depth - 4) // 6
        self.growthRate = growth
        self.inplanes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, padding=1, bias=False)
        self.dense1 = self._dense_block(n, drop)
        self.trans1 = self._transition(compression)
        self.dense2 = self._dense_block(n, drop)
        self.trans2 = self._transition(compression)
        self.dense3 = self._dense_block(n, drop)
        self.bn = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        # bearpaw's AvgPool2d(8) on the 8×8 map; adaptive also fits the 7×7 map of a 28×28 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        bearpaw_init(self)

    def _dense_block(self, layers: int, drop: float) -> nn.Sequential:
        block = []
        for _ in range(layers):
            block.append(DenseBottleneck(self.inplanes, self.growthRate, drop))
            self.inplanes += self.growthRate
        return nn.Sequential(*block)

    def _transition(self, compression: int) -> BCTransition:
        inplanes, self.inplanes = self.inplanes, self.inplanes // compression
        return BCTransition(inplanes, self.inplanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.dense3(self.trans2(self.dense2(x)))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(
    "densenet_bc100_12",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR DenseNet-BC (L=100, k=12): bottlenecks, compression 2",
)
def densenet_bc100_12(num_classes: int = 10, in_channels: int = 3) -> DenseNetBC:
    return DenseNetBC(100, 12, num_classes, in_channels)


@register_model(
    "densenet_bc190_40",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR DenseNet-BC (L=190, k=40): bottlenecks, compression 2",
)
def densenet_bc190_40(num_classes: int = 10, in_channels: int = 3) -> DenseNetBC:
    return DenseNetBC(190, 40, num_classes, in_channels)
