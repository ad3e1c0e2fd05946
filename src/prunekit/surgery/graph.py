"""Which output channels can be removed, and which channels of every layer must go with them.

The model is traced once by torch-pruning's DependencyGraph; its coupling relations are then read once,
as a whole, into *channel units*: the smallest sets of channels (of every conv, linear, BatchNorm,
shortcut, ...) that must be removed together. Two steps, both near-linear in the size of the graph:

1. sides of ops joined without an index change (element-wise ops, BatchNorm, a residual add, a
   depthwise conv's input and output) share one *channel space* (union-find over spaces);
2. relations that move indices (concatenation offsets, split/chunk offsets, flatten into a linear
   layer) and the constraints torch-pruning does not know (a grouped conv loses whole groups or the same
   positions in every group; the equal parts of a chunk lose the same positions, so the parts stay
   equal) join single channels (union-find over channels). A unit is one class of that union.

A coupling group is a set of prunable layers that share units; its members may have different widths
(a concatenation's consumer is as wide as all its producers together) and each member maps its output
channels to the group's units (`ChannelGroup.unit_of`). Nothing here calls torch-pruning's per-layer
`get_pruning_group`, whose search does not terminate in useful time on split/shuffle networks.

torch-pruning is also taught two things it does not know: `ZeroPadShortcut` maps input to output
channels through index buffers (so option-A ResNet stages stay independent), and an operation that
changes or reorders the channels in a way no index map describes (a functional `F.pad` shortcut, a
channel shuffle, a slice of fixed channels, a mean over channels) makes every unit it touches
unprunable instead of silently mis-pruned.

A traced graph is cached per model object (weakly) under a signature of the model's layer shapes and the
example's per-sample shape, so one prune call (layer listing, budget search, surgery, validation) traces
once; any change of shapes (a pruned model) is traced afresh.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping as FlattenIndexMapping

from prunekit.errors import PrunekitError, SurgeryError
from prunekit.measure.cost import Cost, cost
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
class ChannelGroup:
    """Prunable layers that share channel units. ``unit_of[member][c]`` is the unit (0 .. units-1) output
    channel c of `member` belongs to; removing a unit removes every channel mapped to it, in every member
    (and in every layer the units reach)."""

    members: tuple[str, ...]
    units: int
    unit_of: Mapping[str, tuple[int, ...]]

    def kept_channels(self, kept_units: Sequence[int]) -> dict[str, list[int]]:
        """Each member's kept output channels when the group keeps `kept_units`."""
        keep = set(kept_units)
        return {m: [c for c, u in enumerate(self.unit_of[m]) if u in keep] for m in self.members}

    @property
    def aligned(self) -> bool:
        """True when every member has one channel per unit, in unit order (a plain residual group)."""
        return all(units == tuple(range(self.units)) for units in self.unit_of.values())


@dataclass(frozen=True)
class ChannelChangingOp:
    """An autograd op whose channels no index map describes (it changes the channel count, reorders the
    channels, or slices fixed channels); pruning through it would silently mis-index channels."""

    op: str
    in_channels: int
    out_channels: int
    note: str = ""

    def describe(self) -> str:
        if self.note:
            return self.note
        what = "a functional F.pad" if "ConstantPad" in self.op else f"the operation {self.op}"
        return f"{what} that changes the channel count ({self.in_channels} -> {self.out_channels})"


@dataclass(frozen=True)
class Slot:
    """One side of one module (or unwrapped parameter) whose channels a removal edits. ``side`` is "out",
    "in", or "io" for modules whose input and output channels are the same (BatchNorm, depthwise conv)."""

    name: str
    side: str
    width: int
    space: int


@dataclass
class _Space:
    width: int | None = None
    frozen: str | ChannelChangingOp | None = None


# -------------------------------------------------------------------------------------------- tracing


def trace(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of `model` on `example_input` (the one trace per model and
    example shape; `graph_of` caches what is read from it)."""
    try:
        with evaluating(model), torch.enable_grad(), _flatten_maps_from_autograd():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=CUSTOMIZED_PRUNERS, verbose=False
            )
    except PrunekitError:
        raise
    except RuntimeError:
        raise  # the model itself failed on the example input: its own error says why
    except Exception as exc:  # torch-pruning's tracer raises bare assertions and arithmetic errors
        raise SurgeryError(
            f"torch-pruning could not trace the model's channel dependencies ({type(exc).__name__}: {exc}); "
            "prune it by parts or report the model"
        ) from exc


@contextmanager
def _flatten_maps_from_autograd() -> Iterator[None]:
    # torch-pruning infers a reshape's index map by searching the graph for channel counts, which divides
    # by zero or guesses wrong on split/shuffle networks. A flatten (N, C, H, W) -> (N, C·H·W) and its
    # inverse are read here from the shapes autograd recorded; every other reshape is left unmapped and
    # `_channel_changing_nodes` makes what it touches unprunable.
    saved = tp_index_mapping.update_reshape_index_mapping
    tp_index_mapping.update_reshape_index_mapping = _flatten_mapping
    try:
        yield
    finally:
        tp_index_mapping.update_reshape_index_mapping = saved


def _flatten_mapping(graph: tp.DependencyGraph, node: object) -> None:
    grad_fn = node.grad_fn
    out_shape = _output_shape(grad_fn, 0) if grad_fn is not None else None
    ins = [f for f in (grad_fn.next_functions if grad_fn is not None else ()) if f[0] is not None]
    in_shape = _output_shape(*ins[0]) if ins else None
    if out_shape is None or in_shape is None:
        return
    if len(in_shape) == 4 and len(out_shape) == 2 and out_shape[1] == _prod(in_shape[1:]):
        stride, flat_side_inputs = in_shape[2] * in_shape[3], True
    elif len(in_shape) == 2 and len(out_shape) == 4 and in_shape[1] == _prod(out_shape[1:]):
        stride, flat_side_inputs = out_shape[2] * out_shape[3], False
    else:
        return
    if stride == 1:
        return
    # The reshape node's channels are the flat ones; its channel-shaped neighbours see blocks of `stride`.
    neighbours = node.inputs if flat_side_inputs else node.outputs
    for other in neighbours:
        for dep in node.dependencies:
            if dep.target is other:
                dep.index_mapping[0] = FlattenIndexMapping(stride=stride, reverse=True)
        for dep in other.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = FlattenIndexMapping(stride=stride, reverse=False)


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, ChannelGraph]] = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, example_input: torch.Tensor) -> tuple:
    layers = tuple(
        (
            name,
            id(m),  # a replaced submodule of the same shape is a different model
            type(m).__name__,
            getattr(m, "groups", None),
            tuple(tuple(p.shape) for p in m.parameters(recurse=False)),
            tuple(tuple(b.shape) for b in m.buffers(recurse=False)),
        )
        for name, m in model.named_modules()
    )
    return (tuple(example_input.shape[1:]), example_input.dtype, layers)


def graph_of(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """The channel graph of `model` on inputs shaped like `example_input`, traced at most once per model
    object and shape signature (see the module docstring)."""
    key = _signature(model, example_input)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    graph = ChannelGraph(model, example_input)
    _CACHE[model] = (key, graph)
    return graph


# -------------------------------------------------------------------------------------------- the graph


class ChannelGraph:
    """Channel units of `model` traced on `example_input`, addressed by layer name. Holds no reference to
    the model's root (only to its prunable modules), so it can be cached beside the model.

    Tracing runs the model once in eval mode under autograd; every module's train/eval flag is restored.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        batch = example_input.shape[0] if example_input.dim() > 1 else None
        if batch == 1:
            # With a batch of one, torch 2.13's CPU convolution records squeeze/unsqueeze around the conv in
            # autograd, and torch-pruning then sees the real convolution as an element-wise op that changes
            # the channel count. Tracing with two (identical) examples keeps the conv's own grad_fn.
            example_input = example_input.expand(2, *example_input.shape[1:])
        self.modules: dict[str, nn.Module] = {
            name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)
        }
        names = {m: name for name, m in model.named_modules()}
        # every module that owns a slot, by name (held weakly: a graph must not keep a model alive)
        self._owners: dict[str, weakref.ref[nn.Module]] = {}
        order: list[str] = []

        def record(module: nn.Module, _inputs: object, _output: object) -> None:
            name = names[module]
            if name not in order:
                order.append(name)

        shapes: list[tuple[int, ...]] = []

        def record_output(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                shapes.append(tuple(output.shape))

        hooks = [m.register_forward_hook(record) for m in self.modules.values()]
        hooks.append(model.register_forward_hook(record_output))
        try:
            dg = trace(model, example_input)
        finally:
            for h in hooks:
                h.remove()
        self.order: list[str] = order
        self.output_shape: tuple[int, ...] | None = shapes[0] if shapes else None
        if self.output_shape is not None and batch is not None:
            self.output_shape = (batch, *self.output_shape[1:])
        self._traced = {names[m] for m in dg.module2node if isinstance(m, nn.Module) and m in names}
        self.whole_group_convs: set[str] = set()
        self.param_dims: dict[str, int] = {}
        self._dense_cost: tuple[tuple[int, ...], Cost] | None = None
        self._read(dg, names)

    # ------------------------------------------------------------ reading torch-pruning's graph

    def _read(self, dg: tp.DependencyGraph, names: dict[nn.Module, str]) -> None:
        changing = _channel_changing_nodes(dg)
        space_id: dict[tuple[object, str], int] = {}
        parent: list[int] = []

        def space(node: object, fn: object) -> int:
            pruner = dg.get_pruner_of_module(node.module)
            if pruner is None or pruner.prune_out_channels == pruner.prune_in_channels:
                side = "io"
            else:
                side = "out" if fn == pruner.prune_out_channels else "in"
            key = (node, side)
            if key not in space_id:
                space_id[key] = len(parent)
                parent.append(len(parent))
            return space_id[key]

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        nodes = list(dg.module2node.values())
        # Concatenations and splits along the channels are read from autograd itself (which input is which
        # part, and each part's width): torch-pruning infers the part widths by a heuristic search and
        # assumes its nodes' input/output lists are in part order, which a Res2Net-style block breaks.
        by_fn = {node.grad_fn: node for node in nodes if node.grad_fn is not None}
        edges: list[tuple[int, int, int, int, int]] = []  # (space a, offset a, space b, offset b, count)
        ties: list[tuple[int, list[int]]] = []  # (space, part offsets) of chunks whose parts lose alike
        # (node, node) relations read here rather than from torch-pruning's dependencies
        handled: set[tuple[object, object]] = set()
        for node in nodes:
            if node.type == ops.OPTYPE.CONCAT:
                found = _concat_edges(node, by_fn)
                if found is not None:
                    handled.update(
                        {(node, src) for src in node.inputs} | {(src, node) for src in node.inputs}
                    )
                    here = space(node, None)
                    edges += [(here, off, space(src, _out_fn(dg, src)), 0, w) for src, off, w in found]
            elif node.type == ops.OPTYPE.SPLIT:
                cuts = _split_cuts(node.grad_fn)
                consumers = _split_consumers(node, cuts) if cuts is not None else None
                if consumers is not None:
                    handled.update(
                        {(node, dst) for dst in node.outputs} | {(dst, node) for dst in node.outputs}
                    )
                    here = space(node, None)
                    edges += [(here, off, space(dst, _in_fn(dg, dst)), 0, w) for dst, off, w in consumers]
                    if node not in changing:
                        ties.append((here, cuts))

        # Channel shuffles (view → transpose(1, 2) → view) are permutations: read them as such.
        for first, inner, last, groups, width in _shuffles(nodes):
            chain = (first, *inner, last)
            for a, b in zip(chain, chain[1:], strict=False):
                handled.update({(a, b), (b, a)})
            for node in chain:
                changing.pop(node, None)
            src, dst, per = space(first, None), space(last, None), width // groups
            # output channel p·g + k reads input channel k·(C/g) + p
            edges += [(src, k * per + p, dst, p * groups + k, 1) for k in range(groups) for p in range(per)]
            # a pruned shuffle keeps its meaning only if every group loses the same positions
            ties.append((src, list(range(0, width + 1, per))))

        # 1. spaces joined without an index change
        mapped: list[tuple[int, int, list]] = []
        for node in nodes:
            for dep in node.dependencies:
                if (node, dep.target) in handled:
                    continue
                a, b = space(node, dep.trigger), space(dep.target, dep.handler)
                maps = [m for m in dep.index_mapping if m is not None]
                if maps:
                    mapped.append((a, b, maps))
                else:
                    parent[find(a)] = find(b)
        # every traced module has its slots even if nothing couples to them
        for node in nodes:
            pruner = dg.get_pruner_of_module(node.module)
            if pruner is not None:
                space(node, pruner.prune_out_channels)
                space(node, pruner.prune_in_channels)

        roots = sorted({find(i) for i in range(len(parent))})
        canon = {r: k for k, r in enumerate(roots)}
        spaces = [_Space() for _ in roots]
        of_key = {key: canon[find(i)] for key, i in space_id.items()}

        # widths and frozen spaces
        slots: list[Slot] = []
        for (node, side), s in of_key.items():
            width = _width(dg, node, side)
            if width is not None and (spaces[s].width is None or width > spaces[s].width):
                spaces[s].width = width
            # The graph is traced back from the model's outputs, so the nodes nothing reads are those outputs.
            if (node.type == ops.OPTYPE.OUTPUT or not node.outputs) and side != "in":
                spaces[s].frozen = spaces[s].frozen or "output"
            if node in changing:
                spaces[s].frozen = changing[node]
            name = _slot_name(dg, node, names)
            if name is not None and isinstance(node.module, nn.Parameter):
                self.param_dims[name] = node.pruning_dim
            if name is not None and width is not None:
                slots.append(Slot(name, side, width, s))
                if isinstance(node.module, nn.Module):
                    self._owners[name] = weakref.ref(node.module)
        for s in spaces:
            if s.width is None:
                s.width = 0

        # 2. channel-level unions
        offsets = [0]
        for s in spaces:
            offsets.append(offsets[-1] + s.width)
        up = list(range(offsets[-1]))

        def root(i: int) -> int:
            while up[i] != i:
                up[i] = up[up[i]]
                i = up[i]
            return i

        def union(i: int, j: int) -> None:
            ri, rj = root(i), root(j)
            if ri != rj:
                up[max(ri, rj)] = min(ri, rj)

        for a, b, maps in mapped:
            sa, sb = canon[find(a)], canon[find(b)]
            width_a, width_b = spaces[sa].width, spaces[sb].width
            idxs = [tp._helpers._HybridIndex(idx=i, root_idx=i) for i in range(width_a)]
            for m in maps:
                idxs = m(idxs)
            for hybrid in idxs:
                if hybrid.root_idx is not None and 0 <= hybrid.idx < width_b:
                    union(offsets[sa] + hybrid.root_idx, offsets[sb] + hybrid.idx)
        for a, off_a, b, off_b, count in edges:
            sa, sb = canon[find(a)], canon[find(b)]
            count = min(count, spaces[sa].width - off_a, spaces[sb].width - off_b)
            for p in range(count):
                union(offsets[sa] + off_a + p, offsets[sb] + off_b + p)
        for a, cuts in ties:
            # A chunk's parts are cut at equal sizes from whatever width arrives; they must lose the same
            # positions so that the cut still falls between the same channels.
            sa = canon[find(a)]
            for k in range(1, len(cuts) - 1):
                for p in range(cuts[1] - cuts[0]):
                    union(offsets[sa] + p, offsets[sa] + cuts[k] + p)

        for node in nodes:
            module = node.module
            if isinstance(module, nn.Conv2d) and 1 < module.groups and node.type != ops.OPTYPE.DEPTHWISE_CONV:
                s_in, s_out = of_key.get((node, "in")), of_key.get((node, "out"))
                if s_in is None or s_out is None:
                    continue
                g = module.groups
                a, b = module.in_channels // g, module.out_channels // g
                if g >= max(a, b):
                    # whole groups: a group's inputs and outputs go together (a depthwise conv is the case
                    # a = b = 1); the finest choice when there are many narrow groups (ResNeXt, RegNet)
                    self.whole_group_convs.add(names[module])
                    for k in range(g):
                        first = offsets[s_out] + k * b
                        for q in range(a):
                            union(first, offsets[s_in] + k * a + q)
                        for p in range(1, b):
                            union(first, first + p)
                else:
                    # the same positions in every group: inputs and outputs independent
                    for p in range(b):
                        for k in range(1, g):
                            union(offsets[s_out] + p, offsets[s_out] + k * b + p)
                    for q in range(a):
                        for k in range(1, g):
                            union(offsets[s_in] + q, offsets[s_in] + k * a + q)

        # atoms: one id per channel class, numbered in order of first appearance
        self._atoms: list[torch.Tensor] = []
        numbering: dict[int, int] = {}
        for k in range(len(spaces)):
            ids = []
            for i in range(offsets[k], offsets[k + 1]):
                r = root(i)
                if r not in numbering:
                    numbering[r] = len(numbering)
                ids.append(numbering[r])
            self._atoms.append(torch.tensor(ids, dtype=torch.long))
        self.n_atoms = len(numbering)
        self._frozen: dict[int, str | ChannelChangingOp] = {}
        for k, s in enumerate(spaces):
            if s.frozen is not None:
                for atom in self._atoms[k].tolist():
                    self._frozen.setdefault(atom, s.frozen)
        self.slots = [slot for slot in slots if slot.width <= spaces[slot.space].width]
        self._slot_of = {(slot.name, slot.side): slot for slot in self.slots}
        self._groups = self._group_layers()

    def _group_layers(self) -> dict[str, tuple[ChannelGroup, str | ChannelChangingOp | None]]:
        layers = [n for n in self.order if n in self._traced and self._out_slot(n) is not None]
        owner: dict[int, str] = {}
        parent = {n: n for n in layers}

        def find(n: str) -> str:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for name in layers:
            for atom in set(self.atoms(self._out_slot(name)).tolist()):
                if atom in owner:
                    parent[find(name)] = find(owner[atom])
                else:
                    owner[atom] = name
        members: dict[str, list[str]] = {}
        for name in layers:
            members.setdefault(find(name), []).append(name)
        result = {}
        for names in members.values():
            local: dict[int, int] = {}
            unit_of = {}
            for name in names:
                ids = self.atoms(self._out_slot(name)).tolist()
                unit_of[name] = tuple(local.setdefault(a, len(local)) for a in ids)
            reason = next((self._frozen[a] for a in local if a in self._frozen), None)
            group = ChannelGroup(tuple(names), len(local), unit_of)
            for name in names:
                result[name] = (group, reason)
        return result

    # ------------------------------------------------------------ queries

    def _out_slot(self, name: str) -> Slot | None:
        return self._slot_of.get((name, "out")) or self._slot_of.get((name, "io"))

    def atoms(self, slot: Slot) -> torch.Tensor:
        """The unit id (graph-wide) of each channel of `slot`."""
        return self._atoms[slot.space][: slot.width]

    def dense_cost(self, model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
        """`measure.cost` of the traced model, counted once (a budget search applies many plans to it)."""
        if self._dense_cost is None or self._dense_cost[0] != input_shape:
            self._dense_cost = (input_shape, cost(model, input_shape))
        return self._dense_cost[1]

    def module(self, name: str) -> nn.Module | None:
        """The traced module owning slot `name` (None for a parameter, or once the model is gone)."""
        ref = self._owners.get(name)
        return ref() if ref is not None else None

    def out_channels(self, name: str) -> int:
        module = self.modules[name]
        return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

    def traced(self, name: str) -> bool:
        return name in self._traced

    def exclusion(self, name: str) -> str | None:
        """Why layer `name` cannot have output channels removed, or None when it can."""
        if not self.traced(name) or name not in self._groups:
            return "it is not used when the model runs on the example input"
        reason = self._groups[name][1]
        if reason is None:
            return None
        if reason == "output":
            return "its output channels are the model's outputs (the classifier)"
        assert isinstance(reason, ChannelChangingOp)
        if "ConstantPad" in reason.op:
            return (
                f"its channels pass through {reason.describe()}, which torch-pruning treats as element-wise, "
                "so pruning would silently break the model; build option-A shortcuts with "
                "prunekit.models.layers.ZeroPadShortcut instead of F.pad"
            )
        return (
            f"its channels pass through {reason.describe()}, which no channel index map describes, so "
            "pruning would silently break the model; leave it out (ratio 0 with ratios=, e.g. "
            f"ratios='{name}:0', for it and the layers coupled to it)"
        )

    def groups(self) -> list[ChannelGroup]:
        """The prunable coupling groups, in execution order of their first member."""
        seen: dict[tuple[str, ...], ChannelGroup] = {}
        for name in self.order:
            if name in self._groups and self.exclusion(name) is None:
                group = self._groups[name][0]
                seen.setdefault(group.members, group)
        return list(seen.values())

    def prunable_layers(self) -> list[PrunableLayer]:
        return [
            PrunableLayer(
                name, type(self.modules[name]), self.out_channels(name), self._groups[name][0].members
            )
            for name in self.order
            if name in self._groups and self.exclusion(name) is None
        ]

    def removed(self, atoms: torch.Tensor) -> dict[tuple[str, str], list[int]]:
        """``{(module, side): removed channel indices}`` of every slot that loses channels when the units
        `atoms` (graph-wide ids) go."""
        out = {}
        doomed = torch.zeros(self.n_atoms, dtype=torch.bool)
        doomed[atoms] = True
        for slot in self.slots:
            gone = doomed[self.atoms(slot)].nonzero().flatten().tolist()
            if gone:
                out[(slot.name, slot.side)] = gone
        return out

    def unit_counts(self, group: ChannelGroup) -> dict[tuple[str, str], torch.Tensor]:
        """For each slot the group's units reach: how many of its channels each unit holds."""
        lookup = torch.full((self.n_atoms,), -1, dtype=torch.long)
        global_ids = self._global_ids(group)
        lookup[global_ids] = torch.arange(group.units)
        counts = {}
        for slot in self.slots:
            local = lookup[self.atoms(slot)]
            local = local[local >= 0]
            if local.numel():
                counts[(slot.name, slot.side)] = torch.bincount(local, minlength=group.units)
        return counts

    def _global_ids(self, group: ChannelGroup) -> torch.Tensor:
        ids = torch.empty(group.units, dtype=torch.long)
        for name in group.members:
            ids[torch.tensor(group.unit_of[name], dtype=torch.long)] = self.atoms(self._out_slot(name))
        return ids

    def slot_units(self, group: ChannelGroup, name: str, side: str) -> torch.Tensor:
        """The group's local unit of each channel of one slot (-1: not one of the group's units)."""
        lookup = torch.full((self.n_atoms,), -1, dtype=torch.long)
        lookup[self._global_ids(group)] = torch.arange(group.units)
        return lookup[self.atoms(self._slot_of[(name, side)])]

    def slot(self, name: str, side: str) -> Slot | None:
        return self._slot_of.get((name, side))


def _out_fn(dg: tp.DependencyGraph, node: object) -> object:
    pruner = dg.get_pruner_of_module(node.module)
    return None if pruner is None else pruner.prune_out_channels


def _in_fn(dg: tp.DependencyGraph, node: object) -> object:
    pruner = dg.get_pruner_of_module(node.module)
    return None if pruner is None else pruner.prune_in_channels


def _channel_dim(grad_fn: object, ndim: int | None) -> bool:
    dim = getattr(grad_fn, "_saved_dim", None)
    return dim is not None and ndim is not None and ndim >= 2 and dim % ndim == 1


def _shuffles(nodes: list) -> list[tuple[object, list, object, int, int]]:
    """Channel shuffles: (first view, nodes between, last view, groups, channels) for each chain
    ``x.view(n, g, c // g, h, w).transpose(1, 2)[.contiguous()].view(n, c, h, w)``."""
    found = []
    for node in nodes:
        if node.type != ops.OPTYPE.RESHAPE or node.grad_fn is None or len(node.outputs) != 1:
            continue
        out = _output_shape(node.grad_fn, 0)
        ins = [f for f in node.grad_fn.next_functions if f[0] is not None]
        before = _output_shape(*ins[0]) if ins else None
        if out is None or before is None or len(before) != 4 or len(out) != 5 or out[1] * out[2] != before[1]:
            continue
        groups, width = int(out[1]), int(before[1])
        chain, current = [], node.outputs[0]
        while current.grad_fn is not None and current.grad_fn.name() in (
            "TransposeBackward0",
            "CloneBackward0",
        ):
            chain.append(current)
            if len(current.outputs) != 1:
                break
            current = current.outputs[0]
        transposes = [n for n in chain if n.grad_fn.name() == "TransposeBackward0"]
        if (
            len(transposes) != 1
            or {transposes[0].grad_fn._saved_dim0, transposes[0].grad_fn._saved_dim1} != {1, 2}
            or current.type != ops.OPTYPE.RESHAPE
            or current.grad_fn is None
            or _output_shape(current.grad_fn, 0) != tuple(before)
        ):
            continue
        found.append((node, chain, current, groups, width))
    return found


def _concat_edges(node: object, by_fn: dict) -> list[tuple[object, int, int]] | None:
    """(input node, offset, width) of each input of a concatenation along the channels, in order."""
    grad_fn = node.grad_fn
    out = _output_shape(grad_fn, 0)
    if not _channel_dim(grad_fn, len(out) if out else None):
        return None
    found, offset = [], 0
    for fn, nr in grad_fn.next_functions:
        if fn is None:
            return None
        variable = getattr(fn, "variable", None)
        shape = tuple(variable.shape) if variable is not None else _output_shape(fn, nr)
        if shape is None or len(shape) < 2:
            return None
        if fn in by_fn:
            found.append((by_fn[fn], offset, int(shape[1])))
        offset += int(shape[1])
    return found


def _split_cuts(grad_fn: object) -> list[int] | None:
    """Part boundaries of a split along the channels, or None for a split along another dimension."""
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if sizes is None or not _channel_dim(grad_fn, len(sizes)):
        return None
    width = int(sizes[1])
    parts = getattr(grad_fn, "_saved_split_sizes", None)
    if parts is None:
        size = int(getattr(grad_fn, "_saved_split_size", 0) or 0)
        if size <= 0:
            return None
        parts = [min(size, width - start) for start in range(0, width, size)]
    cuts = [0]
    for part in parts:
        cuts.append(cuts[-1] + int(part))
    return cuts


def _split_consumers(node: object, cuts: list[int]) -> list[tuple[object, int, int]] | None:
    """(consumer node, offset, width) for each use of a split's parts; None if a use cannot be read."""
    found = []
    for consumer in node.outputs:
        uses = [
            nr
            for fn, nr in (consumer.grad_fn.next_functions if consumer.grad_fn else ())
            if fn is node.grad_fn
        ]
        if not uses:
            return None
        found += [(consumer, cuts[nr], cuts[nr + 1] - cuts[nr]) for nr in uses]
    return found


def _slot_name(dg: tp.DependencyGraph, node: object, names: dict[nn.Module, str]) -> str | None:
    module = node.module
    if isinstance(module, nn.Parameter):
        return dg._param_to_name.get(module)
    # torch-pruning's stand-ins for functional ops (concat, split, ...) are not modules of the model
    return names.get(module) if isinstance(module, nn.Module) else None


def _width(dg: tp.DependencyGraph, node: object, side: str) -> int | None:
    """The number of channels on one side of a node (None when unknown)."""
    module = node.module
    if isinstance(module, nn.Conv2d) or isinstance(module, ZeroPadShortcut):
        return module.out_channels if side in ("out", "io") else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if side in ("out", "io") else module.in_features
    if isinstance(module, nn.Parameter):
        return int(module.shape[node.pruning_dim])
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    grad_fn = node.grad_fn
    if node.type == ops.OPTYPE.SPLIT:
        sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
        return int(sizes[1]) if sizes is not None and len(sizes) > 1 else None
    if node.type == ops.OPTYPE.OUTPUT:
        shape = getattr(module, "shape", None)
        return int(shape[1]) if shape is not None and len(shape) > 1 else None
    shape = _output_shape(grad_fn, 0) if grad_fn is not None else None
    if shape is not None and len(shape) > 1:
        return int(shape[1])
    return None


def _channel_changing_nodes(dg: tp.DependencyGraph) -> dict[object, ChannelChangingOp]:
    """Nodes whose channels no index map describes (read from autograd metadata): element-wise ops whose
    output channel count differs from an input's, reshapes other than a flatten, slices of the channels,
    and splits into unequal parts."""
    found = {}
    for node in dg.module2node.values():
        grad_fn = node.grad_fn
        if grad_fn is None or node.type not in (
            ops.OPTYPE.ELEMENTWISE,
            ops.OPTYPE.RESHAPE,
            ops.OPTYPE.SLICE,
            ops.OPTYPE.SPLIT,
        ):
            continue
        name = grad_fn.name()
        out_shape = _output_shape(grad_fn, 0)
        if node.type == ops.OPTYPE.SPLIT:
            cuts = _split_cuts(grad_fn)
            parts = [b - a for a, b in zip(cuts, cuts[1:], strict=False)] if cuts else []
            # Only a halving is read as a chunk (its cut moves with the width); any other split is taken
            # as fixed sizes written in the code (Res2Net's `torch.split(x, width)`), which pruning breaks.
            if cuts and not (len(parts) == 2 and parts[0] == parts[1]):
                found[node] = ChannelChangingOp(
                    name, cuts[-1], parts[0], f"a split of the channels into the fixed parts {parts}"
                )
            continue
        if node.type == ops.OPTYPE.SLICE:
            dim = getattr(grad_fn, "_saved_dim", None)
            sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
            if dim == 1 and sizes is not None and out_shape is not None and out_shape[1] != sizes[1]:
                found[node] = ChannelChangingOp(
                    name, int(sizes[1]), int(out_shape[1]),
                    f"a slice of fixed channels x[:, a:b] ({sizes[1]} -> {out_shape[1]} channels)",
                )  # fmt: skip
            continue
        if out_shape is None or len(out_shape) < 2:
            continue
        for next_fn, output_nr in grad_fn.next_functions:
            # A leaf is a parameter (e.g. a Linear weight's transpose), not a channel-carrying activation.
            if next_fn is None or type(next_fn).__name__ == "AccumulateGrad":
                continue
            in_shape = _output_shape(next_fn, output_nr)
            if in_shape is None or len(in_shape) < 2:
                continue
            if node.type == ops.OPTYPE.RESHAPE:
                flatten = len(out_shape) == 2 and out_shape[1] == _prod(in_shape[1:])
                unflatten = len(in_shape) == 2 and in_shape[1] == _prod(out_shape[1:])
                if flatten or unflatten or (len(in_shape) == len(out_shape) and in_shape[1] == out_shape[1]):
                    continue
                found[node] = ChannelChangingOp(
                    name, int(in_shape[1]), int(out_shape[1]),
                    f"a view/reshape {tuple(in_shape)} -> {tuple(out_shape)} that regroups the channels "
                    "(e.g. a channel shuffle)",
                )  # fmt: skip
                break
            if len(in_shape) != len(out_shape) or in_shape[1] in (1, out_shape[1]):
                continue
            found[node] = ChannelChangingOp(name, int(in_shape[1]), int(out_shape[1]))
            break
    return found


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


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
    `example_input`, and layers coupled through an op whose channels no index map describes.
    """
    return graph_of(model, example_input).prunable_layers()


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The prunable coupling groups of `model`, each with its members' channel-to-unit maps."""
    return graph_of(model, example_input).groups()


def coupling_groups(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, ...]]:
    """Each set of prunable layers whose output channels must be removed together, in execution order."""
    return [group.members for group in channel_groups(model, example_input)]
