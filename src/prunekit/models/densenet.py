"""DenseNet-40 for CIFAR (Huang et al. 2017) in HRank's layout and names: growth 12, no bottleneck,
compression 1, stem 24 channels, three dense blocks of 12 layers, transitions at 168 and 312 channels."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.layers import bearpaw_init
from prunekit.models.registry import register_model
from prunekit.models.taps import FeatureTap


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-conv3×3 producing `growth` channels, concatenated after its input.
    (HRank's `DenseBasicBlock`.)"""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv1(self.relu(self.bn1(x)))), 1)


class Transition(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.avgpool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.conv1(self.relu(self.bn1(x))))


class DenseNet(nn.Module):
    def __init__(
        self,
        depth: int = 40,
        growth: int = 12,
        num_classes: int = 10,
        in_channels: int = 3,
        compression: float = 1.0,
    ) -> None:
        super().__init__()
        layers_per_block = (depth - 4) // 3
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for b in range(3):
            dense = []
            for _ in range(layers_per_block):
                dense.append(DenseLayer(channels, growth))
                channels += growth
            blocks.append(nn.Sequential(*dense))
            if b < 2:
                out = int(channels * compression)
                blocks.append(Transition(channels, out))
                channels = out
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = blocks
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        # HRank uses AvgPool2d(8) on the 8×8 map; adaptive also fits the 7×7 map of a 28×28 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        bearpaw_init(self)  # HRank's DenseNet-40 uses bearpaw's init; the Linear keeps PyTorch's default

    def activation_taps(self) -> tuple[FeatureTap, ...]:
        """Each conv after the pre-activation BN-ReLU of the layer that consumes its output (the next dense
        layer's, the transition's, or the final `relu`): all channels for the stem's or a transition's
        output, the conv's own channels at the end of the concat for a dense layer's. So transition convs
        are tapped after their 2×2 average pool."""
        taps = []
        producer, start = "conv1", 0
        for dense, trans in (("dense1", "trans1"), ("dense2", "trans2"), ("dense3", None)):
            for i, layer in enumerate(getattr(self, dense)):
                taps.append(FeatureTap(producer, f"{dense}.{i}.relu", start))
                producer, start = f"{dense}.{i}.conv1", -layer.conv1.out_channels
            taps.append(FeatureTap(producer, f"{trans}.relu" if trans else "relu", start))
            if trans:
                producer, start = f"{trans}.conv1", 0
        return tuple(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans2(self.dense2(self.trans1(self.dense1(x))))
        x = self.relu(self.bn(self.dense3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(
    "densenet40",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="HRank CIFAR DenseNet-40 (growth 12, no bottleneck, compression 1)",
)
def densenet40(num_classes: int = 10, in_channels: int = 3, growth: int = 12) -> DenseNet:
    return DenseNet(40, growth, num_classes, in_channels)
