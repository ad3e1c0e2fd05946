"""bearpaw/pytorch-classification's CIFAR AlexNet (2.47M params with a 10-class head): five convs with
ReLUs and three 2×2 max-pools, no FC layers but the classifier (a 32×32 input leaves a 1×1×256 map)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import register_model


class CifarAlexNet(nn.Module):
    """bearpaw's `AlexNet`; the module indices of `features` and the key names are bearpaw's."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        # ceil_mode changes nothing on 32×32 inputs (every pooled map has an even size) and lets a 28×28
        # input (7×7 after the stem) reach the classifier instead of pooling a 1×1 map to nothing.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "alexnet_cifar",
    num_classes=10,
    in_channels=3,
    input_size=(32, 32),
    description="bearpaw CIFAR AlexNet (5 convs, no hidden FC layers)",
)
def alexnet_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarAlexNet:
    return CifarAlexNet(num_classes, in_channels)
