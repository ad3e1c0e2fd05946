"""Which output channels can be removed, and which layers must lose them together.

Built on torch-pruning's DependencyGraph, taught two things it does not know: `ZeroPadShortcut` maps
input to output channels through index buffers (so option-A ResNet stages stay independent), and an
operation it treats as element-wise but that changes the channel count (a functional `F.pad`
shortcut) makes every layer coupled through it unprunable instead of silently mis-pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from prunekit.models.layers import ZeroPadShortcut
from prunekit.models.probe import evaluating

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


class ZeroPadShortcutPruner(tp.pruner.BasePruningFunc):
    """Input and output channels of a `ZeroPadShortcut` are independent: removing either drops the
    (src, dst) pairs that touch a removed channel and renumbers the survivors, which equals masking."""

    TARGET_MODULES = ZeroPadShortcut

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        dst, src = _drop_and_renumber(layer.dst, layer.src, idxs)
        layer.src, layer.dst = src, dst
        layer.out_channels -= len(set(idxs))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.src, layer.dst = _drop_and_renumber(layer.src, layer.dst, idxs)
        layer.in_channels -= len(set(idxs))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


def _drop_and_renumber(
    side: torch.Tensor, other: torch.Tensor, removed: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the pairs whose `side` index is removed; renumber `side` into the narrowed channel range."""
    gone = torch.as_tensor(sorted(set(removed)), dtype=side.dtype, device=side.device)
    keep = ~torch.isin(side, gone)
    kept = side[keep]
    return kept - torch.searchsorted(gone, kept), other[keep]


CUSTOMIZED_PRUNERS: dict[type[nn.Module], tp.pruner.BasePruningFunc] = {
    ZeroPadShortcut: ZeroPadShortcutPruner()
}


@dataclass(frozen=True)
class PrunableLayer:
    name: str
    module_type: type[nn.Module]
    out_channels: int
    group: tuple[str, ...]
    """Every prunable layer whose output channels must change together with this one (itself included),
    in execution order: a residual stage, a depthwise conv and its producer, concatenation partners."""


@dataclass(frozen=True)
class ChannelChangingOp:
    """An autograd op torch-pruning treats as element-wise although its output has a different channel
    count than its input; pruning through it would silently mis-index channels."""

    op: str
    in_channels: int
    out_channels: int

    def describe(self) -> str:
        what = "a functional F.pad" if "ConstantPad" in self.op else f"the operation {self.op}"
        return f"{what} that changes the channel count ({self.in_channels} -> {self.out_channels})"


@dataclass
class GroupEffect:
    """Channels one root removal takes away from every Conv2d/Linear it reaches, in current indexing."""

    out_removed: dict[str, set[int]] = field(default_factory=dict)
    in_removed: dict[str, set[int]] = field(default_factory=dict)
    reaches_output: bool = False
    channel_changing: list[ChannelChangingOp] = field(default_factory=list)


class ChannelGraph:
    """torch-pruning's DependencyGraph of `model` traced on `example_input`, addressed by layer name.

    Tracing runs the model once in eval mode under autograd; every module's train/eval flag is restored.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.model = model
        batch = example_input.shape[0] if example_input.dim() > 1 else None
        if batch == 1:
            # With a batch of one, torch 2.13's CPU convolution records squeeze/unsqueeze around the conv in
            # autograd, and torch-pruning then sees the real convolution as an element-wise op that changes
            # the channel count. Tracing with two (identical) examples keeps the conv's own grad_fn.
            example_input = example_input.expand(2, *example_input.shape[1:])
        self.modules: dict[str, nn.Module] = {
            name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)
        }
        self._names = {m: name for name, m in model.named_modules()}
        order: list[str] = []

        def record(module: nn.Module, _inputs: object, _output: object) -> None:
            name = self._names[module]
            if name not in order:
                order.append(name)

        shapes: list[tuple[int, ...]] = []

        def record_output(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                shapes.append(tuple(output.shape))

        hooks = [m.register_forward_hook(record) for m in self.modules.values()]
        hooks.append(model.register_forward_hook(record_output))
        try:
            with evaluating(model), torch.enable_grad():
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_input, customized_pruners=CUSTOMIZED_PRUNERS, verbose=False
                )
        finally:
            for h in hooks:
                h.remove()
        self.order: list[str] = order
        self.output_shape: tuple[int, ...] | None = shapes[0] if shapes else None
        if self.output_shape is not None and batch == 1:
            self.output_shape = (1, *self.output_shape[1:])
        self._changing = _channel_changing_nodes(self.dg)
        # The graph is traced back from the model's outputs, so the nodes nothing reads are those outputs.
        self._sinks = {node for node in self.dg.module2node.values() if not node.outputs}
        self._full_effects: dict[str, GroupEffect] = {}

    def out_channels(self, name: str) -> int:
        module = self.modules[name]
        return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

    def traced(self, name: str) -> bool:
        return self.modules[name] in self.dg.module2node

    def effect(self, name: str, removed: Sequence[int]) -> GroupEffect:
        """What removing output channels `removed` of layer `name` does to the whole network."""
        return self.effect_of(self.group(name, removed))

    def group(self, name: str, removed: Sequence[int]) -> tp.dependency.Group:
        module = self.modules[name]
        pruning_fn = self.dg.get_pruner_of_module(module).prune_out_channels
        return self.dg.get_pruning_group(module, pruning_fn, list(removed))

    def effect_of(self, group: tp.dependency.Group) -> GroupEffect:
        effect = GroupEffect()
        for dep, idxs in group:
            node = dep.target
            is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
            if node in self._sinks and is_out:
                effect.reaches_output = True
            if node in self._changing:
                effect.channel_changing.append(self._changing[node])
            name = self._names.get(node.module)
            if name not in self.modules:
                continue
            side = effect.out_removed if is_out else effect.in_removed
            side.setdefault(name, set()).update(idxs)
        return effect

    def exclusion(self, name: str) -> str | None:
        """Why layer `name` cannot have output channels removed, or None when it can."""
        if not self.traced(name):
            return "it is not used when the model runs on the example input"
        effect = self.full_effect(name)
        if effect.reaches_output:
            return "its output channels are the model's outputs (the classifier)"
        if effect.channel_changing:
            return (
                f"its channels pass through {effect.channel_changing[0].describe()}, which torch-pruning "
                "treats as element-wise, so pruning would silently break the model; build option-A "
                "shortcuts with prunekit.models.layers.ZeroPadShortcut instead of F.pad"
            )
        return None

    def full_effect(self, name: str) -> GroupEffect:
        """The effect of removing every output channel of layer `name`: its full coupling, as traced."""
        if name not in self._full_effects:
            self._full_effects[name] = self.effect(name, range(self.out_channels(name)))
        return self._full_effects[name]

    def prunable_layers(self) -> list[PrunableLayer]:
        names = [name for name in self.order if self.exclusion(name) is None]
        groups = _union_groups(names, {n: self.full_effect(n).out_removed.keys() for n in names}, self.order)
        return [
            PrunableLayer(name, type(self.modules[name]), self.out_channels(name), groups[name])
            for name in names
        ]


def _union_groups(
    names: list[str], coupled: dict[str, Iterable[str]], order: list[str]
) -> dict[str, tuple[str, ...]]:
    # Coupling through a concatenation is one-sided in torch-pruning (the wide layer reaches its
    # partners, not the reverse), so the groups are the transitive closure of every layer's reach.
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for name in names:
        for other in coupled[name]:
            if other in parent:
                parent[find(other)] = find(name)
    members: dict[str, list[str]] = {}
    for name in order:
        if name in parent:
            members.setdefault(find(name), []).append(name)
    return {name: tuple(members[find(name)]) for name in names}


def _channel_changing_nodes(dg: tp.DependencyGraph) -> dict[object, ChannelChangingOp]:
    """Element-wise nodes whose output channel count differs from an input's (read from autograd metadata)."""
    found = {}
    for node in dg.module2node.values():
        if node.type != ops.OPTYPE.ELEMENTWISE or node.grad_fn is None:
            continue
        out_shape = _output_shape(node.grad_fn, 0)
        if out_shape is None or len(out_shape) < 2:
            continue
        for next_fn, output_nr in node.grad_fn.next_functions:
            # A leaf is a parameter (e.g. a Linear weight's transpose), not a channel-carrying activation.
            if next_fn is None or type(next_fn).__name__ == "AccumulateGrad":
                continue
            in_shape = _output_shape(next_fn, output_nr)
            if in_shape is None or len(in_shape) != len(out_shape) or in_shape[1] in (1, out_shape[1]):
                continue
            found[node] = ChannelChangingOp(node.grad_fn.name(), in_shape[1], out_shape[1])
            break
    return found


def _output_shape(grad_fn: object, output_nr: int) -> tuple[int, ...] | None:
    # `_input_metadata` is private autograd API; without it the post-surgery forward check still catches
    # the breakage, only with a less specific message.
    try:
        return tuple(grad_fn._input_metadata[output_nr].shape)  # type: ignore[attr-defined]
    except (AttributeError, IndexError, RuntimeError):
        return None


def prunable_layers(model: nn.Module, example_input: torch.Tensor) -> list[PrunableLayer]:
    """The Conv2d/Linear layers whose output channels `apply` can remove, in execution order.

    Excluded: layers whose outputs are the model's outputs (the classifier), layers not run on
    `example_input`, and layers coupled through an op that changes the channel count unseen by the graph.
    """
    return ChannelGraph(model, example_input).prunable_layers()


def coupling_groups(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, ...]]:
    """Each set of prunable layers whose output channels must be removed together, in execution order."""
    groups: dict[tuple[str, ...], None] = {}
    for layer in prunable_layers(model, example_input):
        groups.setdefault(layer.group)
    return list(groups)
