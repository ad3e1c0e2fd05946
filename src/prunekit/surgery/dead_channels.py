"""Dead channels: output channels that are exactly zero or never used, found from the weights.

A pruning method that zeroes weights (DeepHoyer's thresholds, HRank's masks) leaves channels that compute
nothing the network uses; `zero_channel_plan` names them so `surgery.apply` can remove them physically.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError
from prunekit.surgery.constants import per_unit_all, shortcut_written
from prunekit.surgery.graph import ChannelGraph, ChannelGroup, graph_of

#: Kept output indices (sorted) per layer name.
Plan = dict[str, list[int]]


def zero_channel_plan(model: nn.Module, example: Tensor) -> Plan:
    """``{layer: kept output channels}`` for the prunable layers with dead channels; layers without
    any are left out.

    A channel is dead when its output is exactly zero — its filter weights and bias are zero in every
    coupled layer (every BatchNorm it reaches, also after an add or a concatenation, must have γ = β = 0
    there), so activations that map 0 to 0 (ReLU, pooling) pass zero on — or when its output is never
    used: every input channel (column) it feeds in the consumers is zero.
    """
    graph = graph_of(model, example)
    plan: Plan = {}
    for group in graph.groups():
        dead = _zero_output(graph, group) | _unused_output(graph, group)
        if bool(dead.all()):
            raise ConfigError(
                f"all {group.units} output channels of layer {group.members[0]!r} are zero or unused after "
                "pruning; the network would be disconnected: lower the sensitivity"
            )
        if bool(dead.any()):
            plan.update(group.kept_channels((~dead).nonzero().flatten().tolist()))
    return plan


def _zero_output(graph: ChannelGraph, group: ChannelGroup) -> Tensor:
    dead = torch.ones(group.units, dtype=torch.bool)
    for name in group.members:
        module = graph.modules[name]
        zero = (module.weight.detach().flatten(1) == 0).all(1).cpu()
        if module.bias is not None:
            zero &= (module.bias.detach() == 0).cpu()
        dead &= per_unit_all(zero, torch.tensor(group.unit_of[name]), group.units)
    # BN(0) = β − γ·μ/σ is a constant, not zero, unless γ = β = 0. Every BatchNorm these channels reach
    # counts, also one after an add or a concatenation (so not only `models.probe.batchnorm_after`'s).
    for name, side in graph.unit_counts(group):
        module = graph.module(name)
        if isinstance(module, _BatchNorm):
            if module.weight is None or module.bias is None:
                return torch.zeros(group.units, dtype=torch.bool)
            zero = ((module.weight.detach() == 0) & (module.bias.detach() == 0)).cpu()
            dead &= per_unit_all(zero, graph.slot_units(group, name, side), group.units)
    return dead & ~shortcut_written(graph, group)


def _unused_output(graph: ChannelGraph, group: ChannelGroup) -> Tensor:
    consumers = [name for (name, side) in graph.unit_counts(group) if side == "in" and name in graph.modules]
    if not consumers:
        return torch.zeros(group.units, dtype=torch.bool)
    unused = torch.ones(group.units, dtype=torch.bool)
    for name in consumers:
        unused &= per_unit_all(
            _zero_inputs(graph.modules[name]), graph.slot_units(group, name, "in"), group.units
        )
    return unused


def _zero_inputs(module: nn.Module) -> Tensor:
    """Whether each input channel (feature) of a conv/linear layer is read by zero weights only."""
    weight = module.weight.detach()
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        g = module.groups
        per_group = weight.reshape(g, weight.shape[0] // g, weight.shape[1], -1)  # (G, b, a, k·k)
        return (per_group == 0).all(3).all(1).flatten().cpu()  # group-major: channel g·a + q
    return (weight.transpose(0, 1).flatten(1) == 0).all(1).cpu()
