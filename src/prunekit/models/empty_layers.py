"""Layers left with no channels on one side: what a residual branch pruned away whole becomes.

When every output channel of a conv is removed, the layers it fed see no input channel at all: each of
their outputs is its bias (zero without one) everywhere. torch's own convolutions refuse zero-sized
weights, so `surgery.empty.replace_emptied` gives such layers these classes (same parameters and names,
so the model file, the cost count and the BatchNorm folding of the deployed form work unchanged): an
`EmptyConv2d` with no output channels returns an empty map of the right size, one with no input channels
its bias broadcast over the output size; a BatchNorm with no channels returns its empty input.
"""

from __future__ import annotations

from torch import Tensor, nn


def _out_size(conv: nn.Conv2d, x: Tensor) -> tuple[int, int]:
    """The conv's output height and width for input `x`, by torch's formula."""
    h, w = x.shape[-2:]
    geometry = zip(conv.padding, conv.dilation, conv.kernel_size, strict=True)
    if conv.padding == "same" or (
        conv.stride == (1, 1)
        and not isinstance(conv.padding, str)
        and all(2 * p == d * (k - 1) for p, d, k in geometry)
    ):
        return h, w  # the common case, and the fewest ops in a traced (deployed) model
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    size = [
        (dim + 2 * p - d * (k - 1) - 1) // s + 1
        for dim, k, s, p, d in zip((h, w), conv.kernel_size, conv.stride, padding, conv.dilation, strict=True)
    ]
    return size[0], size[1]


class EmptyConv2d(nn.Conv2d):
    """A Conv2d with no output channels (an empty map) or no input channels (its bias, or zeros)."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = _out_size(self, x)
        if self.out_channels == 0:
            return x.new_zeros(x.shape[0], 0, h, w)
        bias = self.bias if self.bias is not None else x.new_zeros(self.out_channels)
        if bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        # A real tensor, not an expanded view: the model may write into a conv's output in place.
        return bias.view(1, -1, 1, 1).expand(x.shape[0], -1, h, w).contiguous()


class EmptyLinear(nn.Linear):
    """A Linear with no outputs (an empty row per input) or no inputs (its bias, or zeros)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.out_features == 0:
            return x.new_zeros(*x.shape[:-1], 0)
        bias = self.bias if self.bias is not None else x.new_zeros(self.out_features)
        return bias.to(x.dtype).expand(*x.shape[:-1], -1).contiguous()


class EmptyBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d with no channels: its (empty) input passes through."""

    def forward(self, x: Tensor) -> Tensor:
        return x


EMPTY_TYPES = (EmptyConv2d, EmptyLinear, EmptyBatchNorm2d)
