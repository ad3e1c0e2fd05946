"""The counters behind published numbers, so a paper's baseline can be regenerated to the digit.

prunekit's own convention is `cost()` (conv + linear MACs, BN separate). The papers used others; each
function here reproduces one, quirks included, and says which paper printed it. All of them walk the
per-layer rows of one `cost()` forward, so a variant (e.g. HRank's count of a pruned model, whose input
widths it never reduces) is another function over the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from prunekit.errors import ConfigError, unknown_name
from prunekit.measure.cost import Cost, cost
from prunekit.models.registry import default_input_shape
from prunekit.models.vgg import VGG16BN

_CONV_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def _cost(model: nn.Module, input_shape: Sequence[int] | None) -> Cost:
    if input_shape is None:
        arch = getattr(model, "prunekit_arch", None)
        if arch is None:
            raise ConfigError(
                "input_shape is needed for a model not built by prunekit.models.create; pass (C, H, W)"
            )
        input_shape = default_input_shape(arch["name"], arch["kwargs"].get("in_channels"))
    return cost(model, input_shape)


def _conv_and_linear_params(model: nn.Module) -> int:
    return sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        for p in m.parameters(recurse=False)
    )


def hrank_flops(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """HRank's `get_flops` on an unpruned model (HRank CVPR 2020 tables; HRankPlus quotes them too).

    Conv multiply-accumulates (bias free) plus, for every Linear, weight.numel + bias.numel — the
    classifier's "FLOPs" are its parameter count, so they differ from its MACs by the bias.
    BN, ReLU, pooling and additions count 0. ResNet-56: 125,485,706 (125.49 M).

    Quirk reproduced: for VGG-16 the published 313.73 M equals conv MACs + *twice* the classifier
    parameters (313,196,544 + 2 × 267,786 = 313,732,116); HRank's counter adds the classifier once more
    for that architecture only.
    """
    c = _cost(model, input_shape)
    conv = sum(r.macs for r in c.layers if r.type in _CONV_TYPES)
    linear = sum(r.params for r in c.layers if r.type == "Linear")
    return conv + linear * (2 if isinstance(model, VGG16BN) else 1)


def hrank_params(model: nn.Module) -> int:
    """HRank's params (its CVPR 2020 tables): conv + linear weights and biases, BN not counted.
    ResNet-56: 848,954 (0.85 M); VGG-16: 14,982,474 (14.98 M)."""
    return _conv_and_linear_params(model)


def thop_flops(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """`thop.profile` 0.1.1 (HRankPlus and many later pruning papers), for the layer types of the zoo.

    Conv: output elements × (C_in/groups)·k² (no bias); Linear: in × out; BatchNorm: 2 × elements;
    AvgPool: output elements; AdaptiveAvgPool: (input/output window + 1) × output elements; ReLU,
    MaxPool, additions, concatenation: 0. ResNet-50: 4,111,514,624 (HRankPlus's 4.11 B); ResNet-18/34:
    1.82 G / 3.67 G.
    """
    c = _cost(model, input_shape)
    total = 0
    for r in c.layers:
        out = math.prod(r.output_shape)
        if r.type.startswith("BatchNorm") or r.type == "SyncBatchNorm":
            total += 2 * out
        elif r.type.startswith("AvgPool"):
            total += out
        elif r.type.startswith("AdaptiveAvgPool"):
            window = math.prod(i // o for i, o in zip(r.input_shape[1:], r.output_shape[1:], strict=True))
            total += (window + 1) * out
        else:
            total += r.macs
    return total


def thop_params(model: nn.Module) -> int:
    """`thop.profile` params: every parameter of the model, BN γ/β and conv biases included.
    ResNet-50: 25,557,032 — HRankPlus prints "25.55 M", i.e. this number truncated, not rounded."""
    return sum(p.numel() for p in model.parameters())


def flops_2x(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """2 × conv + linear MACs ("count the adds"): TPP's and GReg's `get_n_flops_`, biases excluded.
    ResNet-56: 250,971,392 ("0.25 G"); VGG-19-C on CIFAR-100: 796,364,800 ("0.80 G").
    (Their counter divides grouped convs by groups twice; the zoo has no grouped convs, and this does not.)"""
    return 2 * _cost(model, input_shape).macs


def trp_flops(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """TRP's `show_low_rank` (its README "FLOPs speed-up" column, specs/trp.md §8.1): conv
    multiply-accumulates only; the classifier, BN, pooling and additions count 0, and a decomposed conv
    counts its two factor convs. ResNet-20 option B: 40,812,544. The release charges a VH factor pair
    (c·kh + n·kw)·r per output position; we count the vertical factor at its own (input) width, which is
    the same number for the stride-1 padded convs it decomposes and the deployed cost otherwise."""
    c = _cost(model, input_shape)
    return sum(r.macs for r in c.layers if r.type in _CONV_TYPES or r.type == "LowRankConv2d")


@dataclass(frozen=True)
class Counter:
    """A paper's pair of counters, looked up by name (e.g. `--counter hrank`)."""

    name: str
    flops: Callable[..., int]
    params: Callable[[nn.Module], int]
    used_by: str


COUNTERS: dict[str, Counter] = {
    c.name: c
    for c in (
        Counter("hrank", hrank_flops, hrank_params, "HRank (CVPR 2020) tables"),
        Counter("thop", thop_flops, thop_params, "HRankPlus and thop-based papers"),
        Counter("flops_2x", flops_2x, hrank_params, "TPP (ICLR 2023), GReg (ICLR 2021)"),
        Counter("trp", trp_flops, thop_params, "TRP (IJCAI 2020) README: conv MACs, all parameters"),
    )
}


def counter(name: str) -> Counter:
    try:
        return COUNTERS[name]
    except KeyError:
        raise unknown_name("counter", name, list(COUNTERS)) from None
