"""Building blocks the zoo shares, written as real modules so hooks and the pruning graph can see them."""

from __future__ import annotations

import torch
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Option-A ResNet shortcut: subsample by `stride`, then place the input channels into a wider,
    otherwise zero, output (He et al. 2016; HRank/TPP's `F.pad(x[:, :, ::2, ::2], ...)`).

    It is a module with explicit index buffers rather than a functional `F.pad`, because channel
    pruning must know how input channels map to output channels: `src[i]` of the input lands at
    output channel `dst[i]`. Removing an output channel drops the pair that lands there; removing an
    input channel drops its pair. Either way the result equals masking, so pruning stays exact, and
    the stages on both sides can be pruned independently.
    """

    src: torch.Tensor
    dst: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"ZeroPadShortcut cannot narrow {in_channels} -> {out_channels} channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        front = (out_channels - in_channels) // 2  # planes//4 each side for the usual doubling
        self.register_buffer("src", torch.arange(in_channels), persistent=True)
        self.register_buffer("dst", torch.arange(in_channels) + front, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        return out.index_copy(1, self.dst, x.index_select(1, self.src))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, mapped={self.src.numel()}"


def bearpaw_init(model: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """bearpaw/pytorch-classification's initialisation, shared by its CIFAR models: every conv weight
    N(0, sqrt(2 / (k·k·C_out))), BatchNorm γ = 1 and β = 0; WRN also zeroes the classifier's bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
