"""CIFAR ResNets (He et al. 2016, §4.2): depth 6n+2, BasicBlocks, widths 16/32/64 at strides 1/2/2; and
bearpaw/pytorch-classification's ResNet-110 as its README table counts it (`resnet110_bearpaw`).

Option A (zero-padding shortcut, parameter-free) is the variant of HRank, TPP and GReg: ResNet-56 has
125,485,696 conv+linear MACs and 848,954 conv+linear params. Option B (1×1 conv + BN projection on a
shape change) is bearpaw's variant used by TRP and DeepHoyer: ResNet-20 has 40,812,544 conv MACs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.layers import ZeroPadShortcut, bearpaw_init
from prunekit.models.registry import register_model
from prunekit.models.taps import FeatureTap

SHORTCUTS = ("A", "B")


def _shortcut(in_planes: int, planes: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_planes, planes, stride)
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # relu2 sits after the addition: HRank ranks conv2 on this post-add output.
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ConfigError(
                f"unknown ResNet shortcut {shortcut!r}; valid shortcuts: 'A' (zero-padding, HRank/TPP) "
                "or 'B' (1x1 conv + BN projection, TRP/DeepHoyer)"
            )
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut_type = shortcut
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, width, stride if i == 0 else 1, shortcut))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        # Adaptive so that 28×28 MNIST inputs (7×7 final map) work as well as 32×32 CIFAR (8×8).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # akamaster's `_weights_init`: Kaiming-normal (fan_in) on every conv and linear weight.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def activation_taps(self) -> tuple[FeatureTap, ...]:
        """Each conv after its BN-ReLU; relu2 follows the residual add, so a block's conv2 is tapped on
        the block output (shortcut + branch). Option-B shortcut convs have no tap: HRank has none."""
        taps = [FeatureTap("conv1", "relu")]
        for stage in ("layer1", "layer2", "layer3"):
            for b in range(len(getattr(self, stage))):
                block = f"{stage}.{b}"
                taps += [
                    FeatureTap(f"{block}.conv1", f"{block}.relu1"),
                    FeatureTap(f"{block}.conv2", f"{block}.relu2"),
                ]
        return tuple(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth: int) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    return register_model(
        f"resnet{depth}",
        num_classes=10,
        in_channels=3,
        input_size=(32, 32),
        description=f"CIFAR ResNet-{depth}, BasicBlock; shortcut 'A' (zero-pad, default) or 'B' (1x1 conv)",
    )


@_cifar_resnet(20)
def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels, shortcut)


@_cifar_resnet(32)
def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels, shortcut)


@_cifar_resnet(44)
def resnet44(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return CifarResNet(44, num_classes, in_channels, shortcut)


@_cifar_resnet(56)
def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, shortcut)


@_cifar_resnet(110)
def resnet110(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels, shortcut)


class Bottleneck(nn.Module):
    """bearpaw's CIFAR `Bottleneck`: 1×1, 3×3 (stride), 1×1 to 4·planes, each with BN; ReLU after the add.
    bearpaw reuses one ``relu`` module three times; here each use has its own."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride, "B")
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """bearpaw's CIFAR `ResNet` with Bottleneck blocks, `blocks` per stage, widths 16/32/64 ×4.

    Key names are bearpaw's except the projection: bearpaw's ``downsample.0/1`` (1×1 conv + BN) is
    ``shortcut.0/1`` here, the zoo's name (`prunekit import --from bearpaw` renames it)."""

    def __init__(self, blocks: int = 18, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if blocks < 1:
            raise ConfigError(f"a ResNet needs at least one block per stage; got {blocks}")
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        # bearpaw's AvgPool2d(8) on the 8×8 map; adaptive also fits the 7×7 map of a 28×28 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        bearpaw_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(
    "resnet110_bearpaw",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR ResNet-110 as tabled: 18 Bottlenecks per stage, 1x1 conv + BN projection",
)
def resnet110_bearpaw(num_classes: int = 10, in_channels: int = 3) -> BottleneckResNet:
    # bearpaw's code of the time built depth 110 from (110 - 2) // 6 = 18 Bottlenecks per stage (1.70M
    # params, the README's number); the zoo's `resnet110` is He et al.'s BasicBlock ResNet-110 (1.73M).
    return BottleneckResNet(18, num_classes, in_channels)
