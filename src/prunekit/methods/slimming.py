"""Network Slimming (Liu et al., ICCV 2017): an L1 penalty on BatchNorm scales, then one global threshold.

Sparsify: loss += s·Σ|γ| over every BatchNorm layer (the paper's subgradient s·sign(γ) is this term's
gradient). Plan: the channels with the smallest |γ| across all participating layers go first, so each
layer's ratio is learned; unlike the original (which can empty a layer), every layer keeps at least
`min_channels` and loses at most `max_layer_ratio` of its channels (Torch-Pruning #448). The original
threshold is the element at index ⌊total·ratio⌋ with a strict ``>``, which removes one channel more
than asked; we remove exactly ``int(ratio·total)``.

Only layers whose output a BatchNorm reads directly have a γ per channel. The others (pre-activation
ResNets' residual outputs, SE gates, LeNet) keep all their channels, and so do the layers coupled with them;
they are listed in the method details (``summary["slimming"]["not_eligible"]``) and in one warning.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.methods.base import (
    Calib,
    ChannelKeep,
    LayerGroup,
    Method,
    Plan,
    Pruned,
    Schedule,
    example_input,
    prunable_groups,
    register_method,
)
from prunekit.methods.selection import Selection
from prunekit.models.probe import batchnorm_after

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class SlimmingOptions:
    ratio: float = field(
        default=0.5, metadata={"help": "fraction of all participating channels removed (one global count)"}
    )
    layers: str = field(
        default="*", metadata={"help": "comma-separated globs of the layers whose BN takes part"}
    )
    penalty_weight: float = field(
        default=1e-4,
        metadata={
            "help": "s of s*sum|gamma|; paper: 1e-4 VGG, 1e-5 ResNet-164/DenseNet-40",
            "effect": "sparsify",
        },
    )
    min_channels: int = field(
        default=1, metadata={"help": "channels every layer keeps at least", "effect": "data"}
    )
    max_layer_ratio: float = field(
        default=0.9, metadata={"help": "most of one layer's channels that may go", "effect": "data"}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"slimming ratio must be in [0, 1), got {self.ratio:g}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"slimming max_layer_ratio must be in (0, 1), got {self.max_layer_ratio:g}")
        if self.min_channels < 1:
            raise ConfigError(f"slimming min_channels must be at least 1, got {self.min_channels}")
        if self.penalty_weight < 0:
            raise ConfigError(f"slimming penalty_weight must be >= 0, got {self.penalty_weight:g}")
        self.patterns = [p.strip() for p in self.layers.split(",")]
        if not all(self.patterns):
            raise ConfigError(f"slimming layers {self.layers!r} has an empty pattern")


@register_method
class NetworkSlimming(Method):
    """Network Slimming: L1 on BatchNorm scales, then one global threshold on |gamma| (Liu et al., ICCV 2017).

    The allocation is global (the threshold decides each layer's share), so the selection is one ratio
    (`--ratio`, the global count) or a budget, whose knob is that ratio.
    """

    name = "slimming"
    Options = SlimmingOptions
    options: SlimmingOptions
    knob = "ratio"
    knob_range = (0.0, 0.99)
    schedule = Schedule(sparsify_epochs=20, finetune_epochs=10)

    def resolve_selection(self, selection: Selection | None) -> Selection | None:
        if selection is not None and selection.uniform is not None and selection.budget is None:
            self.options = dataclasses.replace(self.options, ratio=selection.uniform)
            return Selection.of(round_to=selection.round_to)  # None unless widths are to be aligned
        return super().resolve_selection(selection)

    def penalty(self, model: nn.Module, step: int = 0) -> Tensor | None:
        gammas = [m.weight for m in model.modules() if isinstance(m, _BATCHNORMS) and m.weight is not None]
        if not gammas:
            raise ConfigError("network slimming needs BatchNorm layers with affine scales; found none")
        return self.options.penalty_weight * torch.cat([g.reshape(-1) for g in gammas]).abs().sum()

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        return self._plan(model, calib)[0]

    def prune(self, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
        from prunekit.surgery import apply

        plan, skipped = self._plan(model, calib)
        pruned = apply(model, plan, example_input(calib, self.name))
        eligible = sum(len(kept) < _width(model, name) for name, kept in plan.items())
        return Pruned(pruned, details={"pruned_layers": eligible, "not_eligible": skipped})

    def _plan(self, model: nn.Module, calib: Calib | None) -> tuple[ChannelKeep, dict[str, str]]:
        """The plan, and the selected layers that cannot take part, each with the reason."""
        example = example_input(calib, self.name)
        bn_of = batchnorm_after(model, example)
        groups, skipped = _eligible(model, self._participating(prunable_groups(model, example)), bn_of)
        if skipped:
            shown = ", ".join(list(skipped)[:8]) + (
                f" (+{len(skipped) - 8} more)" if len(skipped) > 8 else ""
            )
            # One message per model (the default filter shows it once, however often a budget search
            # re-plans): skipping layers silently is what users of other tools complain about.
            warnings.warn(
                f"network slimming keeps every channel of {len(skipped)} layer(s) that no BatchNorm reads "
                f"directly (or that are coupled with one): {shown}; see the method details",
                stacklevel=2,
            )
        if not groups:
            raise ConfigError(
                "network slimming needs a BatchNorm reading a prunable layer's output directly (its scales "
                f"are the criterion); none of the selected layers has one: {', '.join(list(skipped)[:6])}"
            )
        gammas = [self._group_gamma(model, group, bn_of) for group in groups]
        caps = [
            max(0, min(group.out_channels - self.options.min_channels,
                       int(self.options.max_layer_ratio * group.out_channels)))
            for group in groups
        ]  # fmt: skip
        total = sum(group.out_channels for group in groups)
        n_pruned = int(self.options.ratio * total)
        if n_pruned > sum(caps):
            opts = self.options
            raise ConfigError(
                f"slimming ratio {opts.ratio:g} asks to remove {n_pruned} of {total} channels, but with "
                f"min_channels={opts.min_channels} and max_layer_ratio={opts.max_layer_ratio:g} at most "
                f"{sum(caps)} can go (ratio {sum(caps) / total:.4f}); lower the ratio or relax the limits"
            )
        # Each layer can only lose its `cap` smallest channels, so the global choice is the n_pruned
        # smallest among those candidates; a stable sort breaks ties by layer order, then index.
        candidates = [torch.sort(g, stable=True).indices[:cap] for g, cap in zip(gammas, caps, strict=True)]
        values = torch.cat([g[idx] for g, idx in zip(gammas, candidates, strict=True)])
        owner = torch.cat([torch.full_like(idx, i) for i, idx in enumerate(candidates)])
        channel = torch.cat(candidates)
        chosen = torch.sort(values, stable=True).indices[:n_pruned]
        plan: ChannelKeep = {}
        for i, group in enumerate(groups):
            keep = torch.ones(group.out_channels, dtype=torch.bool)
            keep[channel[chosen][owner[chosen] == i]] = False
            # per member, by unit; a member that would lose every unit keeps its largest-γ one
            plan.update(group.kept_channels(keep.nonzero().flatten().tolist(), gammas[i]))
        return plan, skipped

    def _participating(self, groups: list[LayerGroup]) -> list[LayerGroup]:
        names = [name for group in groups for name in group.members]
        for pattern in self.options.patterns:
            if not fnmatch.filter(names, pattern):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ConfigError(
                    f"slimming layer pattern {pattern!r} matches no prunable layer; "
                    f"prunable layers are named like: {shown}"
                )
        return [
            group
            for group in groups
            if any(fnmatch.fnmatchcase(name, p) for name in group.members for p in self.options.patterns)
        ]

    def _group_gamma(self, model: nn.Module, group: LayerGroup, bn_of: dict[str, str]) -> Tensor:
        """|γ| per channel, summed over the group's members (one kept set serves them all)."""
        total = torch.zeros(group.out_channels, dtype=torch.float64)
        for name in group.members:
            total += model.get_submodule(bn_of[name]).weight.detach().double().abs()
        return total


def _width(model: nn.Module, name: str) -> int:
    module = model.get_submodule(name)
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _eligible(
    model: nn.Module, groups: list[LayerGroup], bn_of: dict[str, str]
) -> tuple[list[LayerGroup], dict[str, str]]:
    """The groups every member of which feeds an affine BatchNorm of the group's width, and the reason
    each member of the other groups is left out (a group keeps one channel set, so one member without a
    γ keeps the whole group)."""
    eligible: list[LayerGroup] = []
    skipped: dict[str, str] = {}
    for group in groups:
        reasons = {}
        for name in group.members:
            bn = model.get_submodule(bn_of[name]) if name in bn_of else None
            if bn is None:
                reasons[name] = "no BatchNorm reads its output directly"
            elif bn.weight is None:
                reasons[name] = f"its BatchNorm {bn_of[name]!r} has no affine scale"
            elif bn.weight.numel() != group.out_channels:
                reasons[name] = (
                    f"its BatchNorm {bn_of[name]!r} does not have the group's {group.out_channels} channels"
                )
        if not reasons:
            eligible.append(group)
            continue
        first = next(iter(reasons))
        for name in group.members:
            skipped[name] = reasons.get(name, f"coupled with {first!r}, for which {reasons[first]}")
    return eligible, skipped
