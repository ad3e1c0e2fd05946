"""Remove channels that output a constant, folding the constant into the layers that read them.

A filter whose weights are all zero but whose bias (or following BatchNorm) is not outputs the same value
at every position for every input. Element-wise operations (ReLU, BatchNorm, max-pooling, dropout in eval
mode) keep it constant up to the next conv/linear layer, which therefore adds an input-independent term to
its output. Where that term is also the same at every position (no zero padding sees the channel, e.g. a
flatten into a linear layer, or an unpadded conv), it can move into the consumer's bias — or, for a
bias-free consumer followed by BatchNorm, into that BatchNorm's running mean — and the channel can go.

The term is measured, not derived: the model with the channels removed is compared with the original at
each consumer's output on a batch of real inputs; the removal is kept only if the difference is the same
for every sample and position and the final outputs then match. A group for which that fails keeps its
channels, so folding never changes what the network computes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.models.layers import ZeroPadShortcut
from prunekit.models.probe import batchnorm_after, probe
from prunekit.surgery.channels import ChannelPlan, apply
from prunekit.surgery.equivalence import compare_outputs
from prunekit.surgery.graph import ChannelGraph, ChannelGroup, graph_of


def per_unit_all(flags: Tensor, units: Tensor, n_units: int) -> Tensor:
    """For each of `n_units` units: whether `flags` holds for every channel mapped to it (channels of
    unit -1 belong to no unit of the group and are ignored)."""
    inside = units >= 0
    failing = torch.bincount(units[inside & ~flags.to(units.device)], minlength=n_units)
    return failing[:n_units] == 0


def shortcut_written(graph: ChannelGraph, group: ChannelGroup) -> Tensor:
    """Which of the group's units an option-A shortcut adds data into: such a channel carries the previous
    stage's signal even when every conv of the group has a zero filter for it."""
    written = torch.zeros(group.units, dtype=torch.bool)
    for slot in graph.slots:
        if slot.side != "out":
            continue
        module = graph.module(slot.name)
        if not isinstance(module, ZeroPadShortcut):
            continue
        units = graph.slot_units(group, slot.name, "out")
        hit = torch.zeros(slot.width, dtype=torch.bool)
        hit[module.dst.cpu()] = True
        lands = units[hit & (units >= 0)]
        written[lands] = True
    return written


def constant_channels(graph: ChannelGraph, group: ChannelGroup) -> Tensor:
    """Units whose filter weights are zero in every layer of the coupling group (biases and BatchNorms may
    be anything) and which no shortcut writes into."""
    constant = torch.ones(group.units, dtype=torch.bool)
    for name in group.members:
        zero = (graph.modules[name].weight.detach().flatten(1) == 0).all(1).cpu()
        constant &= per_unit_all(zero, torch.tensor(group.unit_of[name]), group.units)
    return constant & ~shortcut_written(graph, group)


def fold_constant_channels(model: nn.Module, inputs: Tensor) -> tuple[nn.Module, ChannelPlan]:
    """A copy of `model` without its constant-output channels (see the module docstring), and the channels
    each layer that lost some kept (indices into `model`'s channels). `inputs` (a few real samples, at
    least two) trace the model and measure and check every fold. Each coupling group keeps at least one
    channel. `model` is not modified; `apply(model, plan)` alone would drop the constants the copy folded."""
    if inputs.dim() < 2 or len(inputs) < 2:
        raise ConfigError("folding constant channels needs a batch of at least two inputs to check them on")
    current = copy.deepcopy(model).eval()
    inputs = inputs.detach()
    example = inputs[:1]
    plan: dict[str, list[int]] = {}
    tried: set[tuple[str, ...]] = set()
    graph: ChannelGraph | None = None
    while True:
        graph = graph or graph_of(current, example)  # traced again only after a fold changed the model
        step = _next_group(graph, tried)
        if step is None:
            return current, plan
        group, kept, consumers = step
        tried.add(group.members)
        keep = group.kept_channels(kept)
        trial = apply(current, keep, example).eval()
        if _fold(current, trial, consumers, inputs):
            for name in group.members:
                previous = plan.get(name, list(range(graph.out_channels(name))))
                plan[name] = [previous[k] for k in keep[name]]
            current, graph = trial, None


def _next_group(
    graph: ChannelGraph, tried: set[tuple[str, ...]]
) -> tuple[ChannelGroup, list[int], list[str]] | None:
    for group in graph.groups():
        if group.members in tried:
            continue
        constant = constant_channels(graph, group)
        if not bool(constant.any()):
            continue
        consumers = sorted(
            name for (name, side) in graph.unit_counts(group) if side == "in" and name in graph.modules
        )
        if any(_padded(graph.modules[name]) for name in consumers):
            continue  # the border sees zeros, the rest the constant: not one bias (and not worth a trial)
        kept = (~constant).nonzero().flatten().tolist() or [0]
        if len(kept) < group.units:
            return group, kept, consumers
    return None


def _padded(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.modules.conv._ConvNd):
        return False
    return layer.padding != "valid" and any(p != 0 for p in layer.padding)  # "same" counts as padded


def _fold(original: nn.Module, trial: nn.Module, consumers: list[str], inputs: Tensor) -> bool:
    """Move what the removed channels contributed to each consumer into its bias (or the BatchNorm after
    it); False, with `trial` unusable, if a contribution is not one constant per output channel or the
    outputs then differ."""
    if not consumers:
        return False
    before: dict[str, Tensor] = {}
    after: dict[str, Tensor] = {}
    originals, modules = dict(original.named_modules()), dict(trial.named_modules())
    probe(original, inputs, [originals[n].register_forward_hook(_keep(before, n)) for n in consumers])
    probe(trial, inputs, [modules[n].register_forward_hook(_keep(after, n)) for n in consumers])
    batchnorm_of = batchnorm_after(trial, inputs)
    for name in consumers:
        a, b = before[name], after[name]
        if a.shape != b.shape:
            return False
        diff = (a - b).double()
        channel_dim = 1 if isinstance(modules[name], nn.modules.conv._ConvNd) else diff.dim() - 1
        others = [d for d in range(diff.dim()) if d != channel_dim]
        shift = diff.mean(dim=others, keepdim=True)
        tolerance = 1e-5 * max(1.0, float(a.abs().max()))
        if float((diff - shift).abs().max()) > tolerance:
            return False  # the term depends on the input or the position (zero padding): keep the channels
        shift = shift.flatten().to(a.dtype)
        layer = modules[name]
        if layer.bias is not None:
            target, sign = layer.bias, 1.0
        else:
            # A bias-free consumer followed by BN: BN with running mean μ of (y + s) is BN with μ − s of y
            # (in training mode the batch mean absorbs the constant anyway).
            bn = modules[batchnorm_of[name]] if name in batchnorm_of else None
            target, sign = getattr(bn, "running_mean", None), -1.0
        if target is None or target.shape != shift.shape:
            return False
        with torch.no_grad():
            target += sign * shift.to(target.device)
    return compare_outputs(original, trial, inputs).same


def _keep(store: dict[str, Tensor], name: str) -> Callable[..., None]:
    def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
        store[name] = out.clone()  # a copy: an in-place ReLU after the layer may overwrite its output

    return hook
