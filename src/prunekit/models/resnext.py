"""bearpaw/pytorch-classification's CIFAR ResNeXt (Xie et al. 2017, from prlz77/ResNeXt.pytorch): bottleneck
type C (1×1 reduce, grouped 3×3, 1×1 expand), depth 9n+2, stage widths 64·w/128·w/256·w for widen factor w.
ResNeXt-29 8×64d has 34.43M and 16×64d 68.16M params with a 10-class head.

Key names are bearpaw's (``stage_1.stage_1_bottleneck_0.conv_reduce``, ``shortcut.shortcut_conv``,
``classifier``). bearpaw's functional ReLUs are modules here (no parameters, so the same state dict): hooks
and the pruning graph then see each activation.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.registry import register_model


class ResNeXtBottleneck(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, cardinality: int, widen_factor: int
    ) -> None:
        super().__init__()
        d = cardinality * out_channels // widen_factor
        self.conv_reduce = nn.Conv2d(in_channels, d, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_reduce = nn.BatchNorm2d(d)
        self.relu_reduce = nn.ReLU(inplace=True)
        self.conv_conv = nn.Conv2d(
            d, d, kernel_size=3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn = nn.BatchNorm2d(d)
        self.relu = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(d, out_channels, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module(
                "shortcut_conv",
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=False),
            )
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))
        self.relu_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_reduce(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return self.relu_out(self.shortcut(x) + out)


class CifarResNeXt(nn.Module):
    """bearpaw's `CifarResNeXt(cardinality, depth, num_classes, widen_factor)`."""

    def __init__(
        self,
        cardinality: int = 8,
        depth: int = 29,
        num_classes: int = 10,
        widen_factor: int = 4,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 9 != 0 or depth < 11:
            raise ConfigError(f"ResNeXt depth must be 9n+2 (11, 20, 29, ...); got {depth}")
        if cardinality < 1 or widen_factor < 1 or (64 * cardinality) % widen_factor:
            raise ConfigError(
                f"ResNeXt needs positive cardinality and widen_factor with 64·cardinality divisible by "
                f"widen_factor; got {cardinality}, {widen_factor}"
            )
        self.cardinality = cardinality
        self.depth = depth
        self.block_depth = (depth - 2) // 9
        self.widen_factor = widen_factor
        self.stages = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.relu_1 = nn.ReLU(inplace=True)
        self.stage_1 = self.block("stage_1", self.stages[0], self.stages[1], 1)
        self.stage_2 = self.block("stage_2", self.stages[1], self.stages[2], 2)
        self.stage_3 = self.block("stage_3", self.stages[2], self.stages[3], 2)
        # bearpaw's avg_pool2d(x, 8, 1) + view(-1, 1024): the same on 32×32 inputs with widen factor 4;
        # adaptive fits 28×28, and a flatten lets the last stage be pruned.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.stages[3], num_classes)
        # bearpaw's init, by key name: every "conv" weight Kaiming-normal (fan_out), every "bn" weight 1,
        # every bias 0; the classifier Kaiming-normal (fan_in).
        nn.init.kaiming_normal_(self.classifier.weight)
        for key, value in self.state_dict().items():
            if key.endswith(".weight") and "conv" in key:
                nn.init.kaiming_normal_(value, mode="fan_out")
            elif key.endswith(".weight") and "bn" in key:
                value.fill_(1)
            elif key.endswith(".bias"):
                value.zero_()

    def block(self, name: str, in_channels: int, out_channels: int, pool_stride: int = 2) -> nn.Sequential:
        stage = nn.Sequential()
        for b in range(self.block_depth):
            stage.add_module(
                f"{name}_bottleneck_{b}",
                ResNeXtBottleneck(
                    in_channels if b == 0 else out_channels,
                    out_channels,
                    pool_stride if b == 0 else 1,
                    self.cardinality,
                    self.widen_factor,
                ),
            )
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_1(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model(
    "resnext29_8x64d",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR ResNeXt-29 8x64d (cardinality 8, widen factor 4)",
)
def resnext29_8x64d(num_classes: int = 10, in_channels: int = 3) -> CifarResNeXt:
    return CifarResNeXt(8, 29, num_classes, 4, in_channels)


@register_model(
    "resnext29_16x64d",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR ResNeXt-29 16x64d (cardinality 16, widen factor 4)",
)
def resnext29_16x64d(num_classes: int = 10, in_channels: int = 3) -> CifarResNeXt:
    return CifarResNeXt(16, 29, num_classes, 4, in_channels)
