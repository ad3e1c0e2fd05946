"""ImageNet ResNet-18/34/50 with torchvision's exact module names, shapes and init (v1.5: the stride of a
Bottleneck sits on its 3×3 conv2), so torchvision state dicts load strictly; torchvision is not imported."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import register_model
from prunekit.models.taps import FeatureTap


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # torchvision reuses one `relu` twice; hooks are matched by module identity, so two instances.
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)
        self.relu2 = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = _downsample(in_planes, out_planes, stride)
        self.relu3 = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ImageNetResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, strict=True)):
            layer = []
            for j in range(n):
                layer.append(block(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def activation_taps(self) -> tuple[FeatureTap, ...]:
        """The stem conv after BN-ReLU-maxpool; each block conv after its own ReLU, the last one after
        the residual add, and a downsample conv shares the block output with the last conv."""
        taps = [FeatureTap("conv1", "maxpool")]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for b, block in enumerate(getattr(self, stage)):
                name = f"{stage}.{b}"
                convs = [f"{name}.conv{i}" for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
                taps += [FeatureTap(conv, f"{name}.relu{i + 1}") for i, conv in enumerate(convs)]
                if block.downsample is not None:
                    taps.append(FeatureTap(f"{name}.downsample.0", f"{name}.relu{len(convs)}"))
        return tuple(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(
    "resnet18", num_classes=1000, in_channels=3, input_size=(224, 224), description="torchvision ResNet-18"
)
def resnet18(
    num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, zero_init_residual)


@register_model(
    "resnet34", num_classes=1000, in_channels=3, input_size=(224, 224), description="torchvision ResNet-34"
)
def resnet34(
    num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)


@register_model(
    "resnet50",
    num_classes=1000,
    in_channels=3,
    input_size=(224, 224),
    description="torchvision ResNet-50 v1.5 (stride on the 3x3 conv)",
)
def resnet50(
    num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)
