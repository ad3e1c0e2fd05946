"""GoogLeNet for CIFAR (kuangliu-style, as HRank uses it): a 3×3 stem at full resolution, nine inception
modules, every conv with bias followed by BN and ReLU. The "5×5" branch is two stacked 3×3 convs."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import register_model
from prunekit.models.taps import FeatureTap


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Inception(nn.Module):
    """Four parallel branches concatenated along channels: [1×1 | 1×1→3×3 | 1×1→3×3→3×3 | pool→1×1]."""

    #: Per branch, in concat order, the convs tapped on that branch's channels of the output: the branch's
    #: last conv (whose width the slice has), and in the "5×5" branch also the 3×3 conv before it, which
    #: HRank ranks on the branch output. The 1×1 reductions have no tap.
    TAPPED_CONVS = (("branch1x1.0",), ("branch3x3.3",), ("branch5x5.3", "branch5x5.6"), ("branch_pool.1",))

    def __init__(
        self,
        in_channels: int,
        n1x1: int,
        n3x3red: int,
        n3x3: int,
        n5x5red: int,
        n5x5: int,
        pool_planes: int,
    ) -> None:
        super().__init__()
        self.branch1x1 = nn.Sequential(*_conv_bn_relu(in_channels, n1x1, 1))
        self.branch3x3 = nn.Sequential(
            *_conv_bn_relu(in_channels, n3x3red, 1), *_conv_bn_relu(n3x3red, n3x3, 3)
        )
        self.branch5x5 = nn.Sequential(
            *_conv_bn_relu(in_channels, n5x5red, 1),
            *_conv_bn_relu(n5x5red, n5x5, 3),
            *_conv_bn_relu(n5x5, n5x5, 3),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_channels, pool_planes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*_conv_bn_relu(in_channels, 192, 3))
        self.a3 = Inception(192, 64, 96, 128, 16, 32, 32)
        self.b3 = Inception(256, 128, 128, 192, 32, 96, 64)
        # Two pool modules, not one reused: HRank ranks b3 and e4 on their own pooled outputs.
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.a4 = Inception(480, 192, 96, 208, 16, 48, 64)
        self.b4 = Inception(512, 160, 112, 224, 24, 64, 64)
        self.c4 = Inception(512, 128, 128, 256, 24, 64, 64)
        self.d4 = Inception(512, 112, 144, 288, 32, 64, 64)
        self.e4 = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.a5 = Inception(832, 256, 160, 320, 32, 128, 128)
        self.b5 = Inception(832, 384, 192, 384, 48, 128, 128)
        # kuangliu pools the 8×8 map with AvgPool2d(8, stride=1); adaptive also fits 28×28 inputs (7×7).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1024, num_classes)

    def activation_taps(self) -> tuple[FeatureTap, ...]:
        """The stem conv after its BN-ReLU; each inception conv on its branch's channels of the module
        output (every branch ends in BN-ReLU), b3 and e4 on the max-pooled output."""
        taps = [FeatureTap("pre_layers.0", "pre_layers.2")]
        pooled = {"b3": "maxpool1", "e4": "maxpool2"}
        for name in ("a3", "b3", "a4", "b4", "c4", "d4", "e4", "a5", "b5"):
            module: Inception = getattr(self, name)
            start = 0
            for convs in module.TAPPED_CONVS:
                stop = start + module.get_submodule(convs[-1]).out_channels
                taps += [FeatureTap(f"{name}.{conv}", pooled.get(name, name), start, stop) for conv in convs]
                start = stop
        return tuple(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b3(self.a3(self.pre_layers(x)))
        x = self.maxpool1(x)
        x = self.e4(self.d4(self.c4(self.b4(self.a4(x)))))
        x = self.maxpool2(x)
        x = self.b5(self.a5(x))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model(
    "googlenet",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="HRank/kuangliu CIFAR GoogLeNet (conv bias + BN + ReLU everywhere)",
)
def googlenet(num_classes: int = 10, in_channels: int = 3) -> GoogLeNet:
    return GoogLeNet(num_classes, in_channels)
