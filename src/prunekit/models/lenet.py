"""DeepHoyer's MNIST networks: LeNet-300-100 (266,610 params) and Caffe's LeNet-5 (431,080 params).

The originals end in log_softmax and train with NLL loss; that equals cross-entropy on logits, so these
return logits like every other model in the zoo.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import register_model
from prunekit.models.taps import FeatureTap


class LeNet300100(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, input_size: tuple[int, int] = (28, 28)
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * input_size[0] * input_size[1], 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(torch.flatten(x, 1)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5×5 and 50@5×5 (no padding) with 2×2 max-pools, then 500-unit FC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)  # 28 → 24 → 12 → 8 → 4
        self.relu3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def activation_taps(self) -> tuple[FeatureTap, ...]:
        # Not one of HRank's models: each conv after its ReLU, HRank's rule everywhere (specs/hrank.md §1.2).
        return (FeatureTap("conv1", "relu1"), FeatureTap("conv2", "relu2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


@register_model(
    "lenet300_100",
    num_classes=10,
    in_channels=1,
    input_size=(28, 28),
    description="DeepHoyer MNIST MLP 784-300-100-10",
)
def lenet300_100(
    num_classes: int = 10, in_channels: int = 1, input_size: tuple[int, int] = (28, 28)
) -> LeNet300100:
    return LeNet300100(num_classes, in_channels, (input_size[0], input_size[1]))  # a list after JSON


@register_model(
    "lenet5",
    num_classes=10,
    in_channels=1,
    input_size=(28, 28),
    description="DeepHoyer/Caffe MNIST LeNet-5 (20-50 conv, 500 FC)",
)
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels)
