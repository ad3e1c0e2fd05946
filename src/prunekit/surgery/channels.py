"""Apply a channel plan: physically remove output channels, with every coupled layer following, then prove
the result is sound or raise `SurgeryError` naming the layer.

A channel plan maps a Conv2d/Linear layer name to the output-channel indices to KEEP. Layers coupled to
a planned one (a residual stage, a depthwise conv and its producer, concatenation partners) follow it;
two planned layers of one coupled group must agree.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import SurgeryError
from prunekit.measure.cost import cost
from prunekit.models.probe import evaluating
from prunekit.surgery.edits import ChannelEdit, record
from prunekit.surgery.graph import PRUNABLE_TYPES, ChannelGraph, GroupEffect

ChannelPlan = Mapping[str, Sequence[int] | torch.Tensor]


@dataclass(frozen=True)
class ApplyReport:
    """Output widths of every Conv2d/Linear layer and conv+linear cost, before and after one apply."""

    widths_before: dict[str, int]
    widths_after: dict[str, int]
    planned: tuple[str, ...]
    coupled: tuple[str, ...]  # unplanned layers that lost channels because a planned layer did
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def changed(self) -> dict[str, tuple[int, int]]:
        return {
            name: (before, self.widths_after[name])
            for name, before in self.widths_before.items()
            if self.widths_after[name] != before
        }


def apply(model: nn.Module, plan: ChannelPlan, example_input: torch.Tensor) -> nn.Module:
    """A pruned copy of `model` keeping, for each layer in `plan`, exactly the listed output channels."""
    return apply_with_report(model, plan, example_input)[0]


def apply_with_report(
    model: nn.Module, plan: ChannelPlan, example_input: torch.Tensor
) -> tuple[nn.Module, ApplyReport]:
    """`apply`, plus the widths and MACs before and after. `model` itself is never modified; the copy's
    edit history (`surgery.history`) gains this plan."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    kept = {name: _kept_indices(name, spec, layers, model) for name, spec in plan.items()}

    pruned = copy.deepcopy(model)
    before = cost(pruned, tuple(example_input.shape))
    graph = ChannelGraph(pruned, example_input)
    widths_before = {name: graph.out_channels(name) for name in graph.modules}
    planned = [name for name in graph.order if name in kept] + [
        name for name in kept if name not in graph.order
    ]

    for name in planned:
        reason = graph.exclusion(name)
        if reason is not None:
            raise SurgeryError(f"cannot prune layer {name!r}: {reason}")
    removed = {name: sorted(set(range(widths_before[name])) - set(kept[name])) for name in planned}
    effects = {name: graph.effect(name, idxs) for name, idxs in removed.items() if idxs}
    final = _coupled_removals(graph, removed, effects)
    _check_grouped_convs(graph, effects)

    remaining = {name: list(range(width)) for name, width in widths_before.items()}
    for name in planned:
        doomed = set(removed[name])
        positions = [i for i, original in enumerate(remaining[name]) if original in doomed]
        if not positions:  # already removed through a coupled layer earlier in the plan
            continue
        group = graph.group(name, positions)
        effect = graph.effect_of(group)
        try:
            group.prune(record_history=False)
        except Exception as exc:  # torch-pruning raises bare assertions and index errors
            raise SurgeryError(f"torch-pruning failed to prune layer {name!r}: {exc}") from exc
        for layer, idxs in effect.out_removed.items():
            remaining[layer] = [o for i, o in enumerate(remaining[layer]) if i not in idxs]

    _validate(pruned, graph, example_input, kept, remaining, widths_before, final)
    record(pruned, ChannelEdit(kept, tuple(example_input.shape[1:])))
    after = cost(pruned, tuple(example_input.shape))
    widths_after = {name: graph.out_channels(name) for name in graph.modules}
    report = ApplyReport(
        widths_before=widths_before,
        widths_after=widths_after,
        planned=tuple(planned),
        coupled=tuple(n for n in graph.order if n in final and n not in kept),
        params_before=before.params,
        params_after=after.params,
        macs_before=before.macs,
        macs_after=after.macs,
    )
    return pruned, report


def _kept_indices(
    name: str, spec: Sequence[int] | torch.Tensor, layers: dict[str, nn.Module], model: nn.Module
) -> list[int]:
    if name not in layers:
        raise _unknown_layer(name, layers, model)
    module = layers[name]
    width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    if isinstance(spec, torch.Tensor):
        if spec.dtype == torch.bool:
            if spec.shape != (width,):
                raise SurgeryError(
                    f"layer {name!r}: a boolean keep-mask must have shape ({width},); got {tuple(spec.shape)}"
                )
            spec = spec.nonzero().flatten()
        elif spec.dim() != 1 or spec.is_floating_point() or spec.is_complex():
            raise SurgeryError(
                f"layer {name!r}: kept channels must be a 1-D integer tensor; "
                f"got {spec.dtype} {tuple(spec.shape)}"
            )
        indices = [int(i) for i in spec.tolist()]
    else:
        if isinstance(spec, (str, bytes)) or not all(isinstance(i, int) for i in spec):
            raise SurgeryError(f"layer {name!r}: kept channels must be a sequence of ints; got {spec!r}")
        indices = [int(i) for i in spec]
    if not indices:
        raise SurgeryError(
            f"plan keeps 0 of the {width} output channels of layer {name!r}; keep at least one "
            "(a layer with no channels disconnects the network)"
        )
    bad = sorted({i for i in indices if not 0 <= i < width})
    if bad:
        raise SurgeryError(f"layer {name!r} has {width} output channels (0..{width - 1}); plan keeps {bad}")
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise SurgeryError(f"layer {name!r}: plan lists channels {duplicates} more than once")
    return sorted(indices)


def _unknown_layer(name: str, layers: dict[str, nn.Module], model: nn.Module) -> SurgeryError:
    other = dict(model.named_modules()).get(name)
    if other is not None:
        return SurgeryError(
            f"layer {name!r} is a {type(other).__name__}; a channel plan names Conv2d or Linear layers"
        )
    close = difflib.get_close_matches(name, list(layers), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return SurgeryError(f"no Conv2d or Linear layer named {name!r} in the model{hint}")


def _coupled_removals(
    graph: ChannelGraph, removed: dict[str, list[int]], effects: dict[str, GroupEffect]
) -> dict[str, set[int]]:
    """Every layer's removed channels once all planned layers and their couplings are applied; refuses
    plans whose coupled layers disagree or that would empty an unplanned layer."""
    final: dict[str, set[int]] = {}
    cause: dict[str, str] = {}
    for name, effect in effects.items():
        for layer, gone in effect.out_removed.items():
            final.setdefault(layer, set()).update(gone)
            cause.setdefault(layer, name)
            if layer in removed and not gone <= set(removed[layer]):
                raise SurgeryError(
                    f"layers {layer!r} and {name!r} are coupled (residual add, concatenation or depthwise "
                    f"conv) and must keep the same channels, but the kept channels of {name!r} remove "
                    f"{sorted(gone)} from {layer!r} while the plan for {layer!r} removes {removed[layer]}; "
                    "give them one index set (or plan only one of them)"
                )
    for layer, gone in final.items():
        if len(gone) >= graph.out_channels(layer):
            raise SurgeryError(
                f"pruning {cause[layer]!r} as planned removes all {graph.out_channels(layer)} output "
                f"channels of the coupled layer {layer!r}; keep at least one"
            )
    return final


def _check_grouped_convs(graph: ChannelGraph, effects: dict[str, GroupEffect]) -> None:
    # torch-pruning slices a grouped conv's weight as if every group lost the same channels; anything
    # else would silently connect filters to the wrong inputs, so it is refused here.
    for name, effect in effects.items():
        for side, removals in (("output", effect.out_removed), ("input", effect.in_removed)):
            for layer, gone in removals.items():
                conv = graph.modules[layer]
                if not isinstance(conv, nn.Conv2d) or conv.groups in (1, conv.out_channels):
                    continue
                size = (conv.out_channels if side == "output" else conv.in_channels) // conv.groups
                per_group = [
                    {i - g * size for i in gone if g * size <= i < (g + 1) * size} for g in range(conv.groups)
                ]
                if any(local != per_group[0] for local in per_group):
                    raise SurgeryError(
                        f"pruning {name!r} removes {side} channels {sorted(gone)} of the grouped conv "
                        f"{layer!r} (groups={conv.groups}, {size} channels per group); a grouped conv can "
                        "only lose the same positions in every group"
                    )


def _validate(
    pruned: nn.Module,
    graph: ChannelGraph,
    example_input: torch.Tensor,
    kept: dict[str, list[int]],
    remaining: dict[str, list[int]],
    widths_before: dict[str, int],
    final: dict[str, set[int]],
) -> None:
    for name in graph.order:
        width = graph.out_channels(name)
        expected = widths_before[name] - len(final.get(name, ()))
        if name in kept and (width != len(kept[name]) or remaining[name] != kept[name]):
            raise SurgeryError(
                f"layer {name!r} has {width} output channels after pruning; the plan keeps {len(kept[name])} "
                "(torch-pruning skipped or only partly applied it)"
            )
        if width != expected:
            raise SurgeryError(
                f"layer {name!r} went from {widths_before[name]} to {width} output channels, but the plan "
                f"and its coupled layers account for {expected}"
            )
    for name, module in pruned.named_modules():
        for attr in ("out_channels", "out_features", "num_features"):
            if getattr(module, attr, None) == 0:
                raise SurgeryError(f"layer {name!r} ended with zero channels ({attr}=0)")
    try:
        with evaluating(pruned), torch.no_grad():
            shape = tuple(pruned(example_input).shape)
    except RuntimeError as exc:
        raise SurgeryError(
            f"the pruned model no longer runs on the example input ({exc}); an operation torch-pruning "
            "treats as element-wise probably changes the channel count (e.g. a functional F.pad "
            "shortcut, which cannot be pruned safely: use prunekit.models.layers.ZeroPadShortcut)"
        ) from exc
    if shape != graph.output_shape:
        raise SurgeryError(
            f"the pruned model's output has shape {shape}, the original's {graph.output_shape}"
        )
