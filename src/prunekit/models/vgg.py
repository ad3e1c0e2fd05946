"""CIFAR VGGs with batch norm: HRank's VGG-16 and EigenDamage/TPP's `vgg19_C`.

Both keep every layer as its own module in one `features` Sequential, so the module indices that the
papers' code uses (HRank's relucfg [2, 6, 9, 13, ...], TPP's conv indices [0, 3, 7, 10, ...]) address
the same layers here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from prunekit.models.registry import register_model
from prunekit.models.taps import FeatureTap

# 'M' = 2×2 max-pool. VGG-16 stops without a pool after conv13 (2×2 map), VGG-19-C after conv16.
VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip


def make_features(
    cfg: tuple[int | str, ...], in_channels: int, conv_bias: bool, ceil_mode: bool = False
) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
        else:
            assert isinstance(v, int)
            layers += [
                nn.Conv2d(channels, v, kernel_size=3, padding=1, bias=conv_bias),
                nn.BatchNorm2d(v),
                nn.ReLU(inplace=True),
            ]
            channels = v
    return nn.Sequential(*layers)


def _slimming_init(model: nn.Module) -> None:
    # The init HRank and EigenDamage inherit from Network Slimming's VGG: conv N(0, sqrt(2/(k·k·C_out))),
    # BN γ = 0.5 (not 1), linear N(0, 0.01); all biases 0.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class VGG16BN(nn.Module):
    """HRank's `vgg_16_bn`: 13 conv3×3 (bias) + BN + ReLU, a 2-layer classifier with BatchNorm1d."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = make_features(VGG16_CFG, in_channels, conv_bias=True)
        # HRank pools the last 2×2 map with AvgPool2d(2); adaptive gives the same 1×1 and also takes the
        # 1×1 map a 28×28 input leaves (28 → 14 → 7 → 3 → 1).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(512, 512)),
                    ("norm1", nn.BatchNorm1d(512)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(512, num_classes)),
                ]
            )
        )
        _slimming_init(self)

    def activation_taps(self) -> tuple[FeatureTap, ...]:
        """Each conv after its ReLU, or after the max-pool that follows it (HRank's relucfg 6, 13, 23, 33:
        conv2, 4, 7, 10 are tapped on the pooled map). The last conv has no tap: HRank never ranks it."""
        features = list(self.features)
        convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
        taps = []
        for i in convs[:-1]:
            relu = i + 2  # conv, BN, ReLU
            pooled = relu + 1 < len(features) and isinstance(features[relu + 1], nn.MaxPool2d)
            taps.append(FeatureTap(f"features.{i}", f"features.{relu + 1 if pooled else relu}"))
        return tuple(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class VGG19BN(nn.Module):
    """EigenDamage's `vgg19_C` (used by TPP/GReg on CIFAR-100): 16 conv3×3 (no bias) + BN + ReLU,
    global average pooling and a single Linear."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.features = make_features(VGG19_CFG, in_channels, conv_bias=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        _slimming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BearpawVGG19BN(nn.Module):
    """bearpaw/pytorch-classification's CIFAR `vgg19_bn` (20.04M params with a 10-class head): 16 conv3×3
    (with bias) + BN + ReLU, five max-pools (the last leaves a 1×1 map on 32×32 inputs) and one Linear.
    Key names are bearpaw's (``features.N``, ``classifier``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        # ceil_mode changes nothing on 32×32 inputs (every pooled map has an even size) and lets a 28×28
        # input reach a 1×1 map (28, 14, 7, 4, 2, 1) instead of pooling a 1×1 map to nothing.
        self.features = make_features((*VGG19_CFG, "M"), in_channels, conv_bias=True, ceil_mode=True)
        self.classifier = nn.Linear(512, num_classes)
        # bearpaw's init: conv N(0, sqrt(2/(k·k·C_out))), BN γ=1, linear N(0, 0.01); all biases 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "vgg16_bn",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="HRank CIFAR VGG-16-BN (conv bias, Linear-BN-ReLU-Linear classifier)",
)
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG16BN:
    return VGG16BN(num_classes, in_channels)


@register_model(
    "vgg19_bn",
    num_classes=100,
    in_channels=3,
    input_size=(32, 32),
    description="TPP/EigenDamage CIFAR VGG-19-BN `vgg19_C` (no conv bias, one Linear)",
)
def vgg19_bn(num_classes: int = 100, in_channels: int = 3) -> VGG19BN:
    return VGG19BN(num_classes, in_channels)


@register_model(
    "vgg19_bn_bearpaw",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR VGG-19-BN (conv bias, five max-pools, one Linear)",
)
def vgg19_bn_bearpaw(num_classes: int = 10, in_channels: int = 3) -> BearpawVGG19BN:
    return BearpawVGG19BN(num_classes, in_channels)
