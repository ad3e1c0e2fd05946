"""bearpaw/pytorch-classification's CIFAR PreResNet (He et al., "Identity Mappings", 2016): BN-ReLU before
each conv, a plain 1×1 conv (no BN) as the projection shortcut, and a final BN-ReLU before the pool.
PreResNet-110 as bearpaw's table counts it (1.70M params with a 10-class head) has 18 Bottleneck blocks
per stage (`bearpaw_blocks`).

Key names are bearpaw's except the projection: bearpaw's ``downsample.0`` is ``shortcut.0`` here, the zoo's
name for it (`prunekit import --from bearpaw` renames it). bearpaw reuses one ``relu`` module per block;
here each use has its own (``relu1``, ``relu2``, ...), since hooks tell layers apart by module.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.layers import bearpaw_init
from prunekit.models.registry import register_model


def bearpaw_blocks(depth: int) -> tuple[int, bool]:
    """(blocks per stage, bottleneck) of bearpaw's ``--depth`` as its README table measured it: the code of
    the time took Bottleneck blocks for depth >= 44 and (depth - 2) // 6 of them per stage, so its
    "110" has 18 Bottlenecks per stage (164 layers, 1.70M params; today's code defaults to BasicBlocks)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ConfigError(f"bearpaw's CIFAR ResNet depth must be 6n+2 (20, 56, 110, ...); got {depth}")
    return (depth - 2) // 6, depth >= 44


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        # bearpaw's projection reads the block input before its BN-ReLU.
        return out + (x if self.shortcut is None else self.shortcut(x))


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


class PreResNet(nn.Module):
    """bearpaw's `PreResNet`: `blocks` blocks per stage (BasicBlocks, or Bottlenecks with ``bottleneck``),
    widths 16/32/64 (×4 for Bottlenecks) at strides 1/2/2."""

    def __init__(
        self, blocks: int = 18, bottleneck: bool = True, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ConfigError(f"PreResNet needs at least one block per stage; got {blocks}")
        block: type[PreActBasicBlock] | type[PreActBottleneck] = (
            PreActBottleneck if bottleneck else PreActBasicBlock
        )
        n = blocks
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 16, n)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU(inplace=True)
        # bearpaw's AvgPool2d(8) on the 8×8 map; adaptive also fits the 7×7 map of a 28×28 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        bearpaw_init(self)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        shortcut = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            shortcut = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False)
            )
        layers = [block(self.inplanes, planes, stride, shortcut)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(
    "preresnet110",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR PreResNet-110 as tabled: 18 pre-act Bottlenecks per stage, 1x1 projection",
)
def preresnet110(num_classes: int = 10, in_channels: int = 3) -> PreResNet:
    return PreResNet(*bearpaw_blocks(110), num_classes, in_channels)
