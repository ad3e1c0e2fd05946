"""Dead channels: output channels that are exactly zero or never used, found from the weights.

A pruning method that zeroes weights (DeepHoyer's thresholds, HRank's masks) leaves channels that compute
nothing the network uses; `zero_channel_plan` names them so `surgery.apply` can remove them physically.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError
from prunekit.surgery.constants import shortcut_written
from prunekit.surgery.graph import ChannelGraph

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
    graph = ChannelGraph(model, example)
    groups: dict[tuple[str, ...], int] = {}
    for layer in graph.prunable_layers():
        groups.setdefault(layer.group, layer.out_channels)
    plan: Plan = {}
    for members, width in groups.items():
        dead = _zero_output(graph, members, width) | _unused_output(graph, members[0], width)
        if bool(dead.all()):
            raise ConfigError(
                f"all {width} output channels of layer {members[0]!r} are zero or unused after pruning; "
                "the network would be disconnected: lower the sensitivity"
            )
        if bool(dead.any()):
            plan.update(dict.fromkeys(members, (~dead).nonzero().flatten().tolist()))
    return plan


def _zero_output(graph: ChannelGraph, members: tuple[str, ...], width: int) -> Tensor:
    dead = torch.ones(width, dtype=torch.bool)
    for name in members:
        module = graph.modules[name]
        dead &= (module.weight.detach().flatten(1) == 0).all(1).cpu()
        if module.bias is not None:
            dead &= (module.bias.detach() == 0).cpu()
    # BN(0) = β − γ·μ/σ is a constant, not zero, unless γ = β = 0. Every BatchNorm these channels reach
    # counts, also one after an add or a concatenation (so not only `models.probe.batchnorm_after`'s);
    # `idxs` lists the BN channel each of the group's channels lands on, in order.
    for dep, idxs in graph.group(members[0], range(width)):
        module = dep.target.module
        if isinstance(module, _BatchNorm):
            if module.weight is None or module.bias is None or len(idxs) != width:
                return torch.zeros(width, dtype=torch.bool)
            at = torch.as_tensor(list(idxs), device=module.weight.device)
            dead &= ((module.weight.detach()[at] == 0) & (module.bias.detach()[at] == 0)).cpu()
    return dead & ~shortcut_written(graph, members, width)


def _unused_output(graph: ChannelGraph, name: str, width: int) -> Tensor:
    consumers = graph.full_effect(name).in_removed
    if not consumers:
        return torch.zeros(width, dtype=torch.bool)
    unused = torch.ones(width, dtype=torch.bool)
    for consumer, indices in consumers.items():
        module = graph.modules[consumer]
        if len(indices) % width or (isinstance(module, nn.Conv2d) and module.groups != 1):
            # An index mapping we cannot read as `width` equal blocks (or grouped-conv inputs): keep all.
            return torch.zeros(width, dtype=torch.bool)
        weight = module.weight.detach()
        zero_inputs = (weight.transpose(0, 1).flatten(1) == 0).all(1).cpu()
        # Channel c feeds a contiguous block of inputs: itself for a conv, c·h·w … (c+1)·h·w − 1 after a
        # flatten (channel-major), shifted by an offset after a concatenation; sorted, the blocks line up.
        blocks = torch.tensor(sorted(indices)).reshape(width, -1)
        unused &= zero_inputs[blocks].all(1)
    return unused
