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
channel shuffle, a slice of fixed channels, a mean over channels, a functional conv the surgery cannot
cut) makes every unit it touches unprunable instead of silently mis-pruned. So do sizes written in the
model's code (`view(-1, 2048)`, `split(x, [16, 24, 24])`), found during the trace by recording how each
view/split was asked for (`_CallRecorder`), and norms whose statistics mix channels (LayerNorm; a
GroupNorm module instead loses whole groups). Equal split sizes read from one module attribute (Res2Net's
`self.width`, CSPNet's `self.expand_chs // 2`) are set by the surgery, as are a functional depthwise conv's
weight buffer and groups attribute (timm's BlurPool2d); a Linear on a channels-last tensor prunes between
Linear layers (ConvNeXt's MLP hidden features).

A traced graph is cached per model object (weakly) under a signature of the model's layer shapes and the
example's per-sample shape, so one prune call (layer listing, budget search, surgery, validation) traces
once; any change of shapes (a pruned model) is traced afresh.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning import ops
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping as FlattenIndexMapping

from prunekit.errors import PrunekitError, SurgeryError
from prunekit.measure.cost import Cost, cost
from prunekit.models.empty_layers import EMPTY_TYPES
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
    why: str = ""
    """Why pruning through it is wrong, when not because no index map describes it (a norm's statistics)."""
    cause: bool = False
    """True for the root cause (a norm, a size written in the code): it names a unit's refusal rather than a
    mere reindexing on the same path (the permutes around a channels-last LayerNorm)."""
    code: str = ""
    """The line of the model's code that asked for it (when a size written there is the cause)."""

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
            # Our own forward call: without it torch-pruning tries `model(*example_inputs)` — for a tensor
            # `model(x[0], x[1], ...)`, at batch one an unbatched (C, H, W) forward that wastes time and whose
            # graph is kept whenever the model happens to run unbatched to its end — and after any failure
            # `model(example_inputs)`, whose TypeError would hide the model's own error.
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_input,
                forward_fn=_forward,
                customized_pruners=CUSTOMIZED_PRUNERS,
                verbose=False,
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


def _forward(model: nn.Module, example_input: torch.Tensor) -> object:
    return model(example_input)


@contextmanager
def _flatten_maps_from_autograd() -> Iterator[None]:
    # torch-pruning infers a reshape's index map by searching the graph for channel counts, which divides
    # by zero or guesses wrong on split/shuffle networks. A flatten (N, C, H, W) -> (N, C·H·W) and its
    # inverse are read here from the shapes autograd recorded; every other reshape is left unmapped and
    # `_channel_changing_nodes` makes what it touches unprunable.
    # Also records how the model's code asked for each view, split, slice and norm (`_CallRecorder`).
    # torch-pruning's concat mapping is guarded (`_guarded_concat_mapping`): prunekit reads concatenations
    # from autograd itself (`_concat_edges`), so a concat torch-pruning cannot size needs no map of its own.
    saved = tp_index_mapping.update_reshape_index_mapping, tp_index_mapping.update_concat_index_mapping
    tp_index_mapping.update_reshape_index_mapping = _flatten_mapping
    tp_index_mapping.update_concat_index_mapping = _guarded_concat_mapping
    try:
        with _CallRecorder():
            yield
    finally:
        tp_index_mapping.update_reshape_index_mapping, tp_index_mapping.update_concat_index_mapping = saved


_TP_CONCAT_MAPPING = tp_index_mapping.update_concat_index_mapping


def _guarded_concat_mapping(graph: tp.DependencyGraph, node: object) -> None:
    # torch-pruning 1.6 sums a concatenation's inferred input widths before checking them for None, so a
    # concat of an input it cannot size (CSPNet's `cat([block(x1) + x1, x2])`: an add of a conv output and
    # a split part) raises TypeError inside `build_dependency` and the whole model would be refused. Such a
    # concat is left without torch-pruning's index map; `_read` maps every channel concat from autograd.
    try:
        _TP_CONCAT_MAPPING(graph, node)
    except TypeError:
        node.module.concat_sizes = None


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


# ------------------------------------------------------------------ how the code asked for a shape
# Autograd records what a view or split produced, not how the code asked for it: `view(-1, 2048)` and
# `view(x.size(0), -1)` both turn (N, 2048, 1, 1) into (N, 2048), but only the second follows a pruned
# width. During the trace a TorchFunctionMode therefore records each view/split/slice/norm call's
# arguments and line on its autograd node (`grad_fn.metadata`), and the channel dimension read from any
# tensor (`x.size(1)`, `x.shape[1]`, `b, c, h, w = x.size()`) is handed to the code as a `_Width`: an int
# that stays a `_Width` through integer arithmetic, so a size computed from a width is told from a number
# written in the code (which pruning leaves behind).

_CALL = "prunekit_call"


class _Width(int):
    """An int read from a tensor's channel dimension during the trace (see above)."""


def _keep_width(op: str) -> None:
    base = getattr(int, op)

    def method(self: int, other: object) -> object:
        result = base(int(self), other)
        return _Width(result) if type(result) is int else result

    setattr(_Width, op, method)


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
            "__rfloordiv__", "__mod__", "__rmod__"):  # fmt: skip
    _keep_width(_op)


@dataclass(frozen=True)
class _Call:
    """One call of the model's code that shapes channels: its kind, the sizes it passed, and its line."""

    kind: str  # "view", "split", "chunk", "slice", "layer_norm", "group_norm", "conv", "linear"
    sizes: tuple
    where: str
    attribute: tuple[nn.Module, str, int] | None = None
    """For a split whose sizes are written in the code: the one attribute of the calling module that the
    line reads them from (`self.width`), which the surgery can set to the pruned sizes, and the number the
    line divides it by (1, or k for `self.expand_chs // k`)."""
    source: object = None
    """For a linear layer applied to a tensor of more than two dimensions: the autograd node of its input,
    where the reshapes autograd records inside the layer begin (`_channels_last_linears`)."""
    buffer: tuple[nn.Module, str] | None = None
    """For a functional depthwise conv whose weight is a per-channel buffer of the calling module (timm's
    BlurPool2d): that module and the buffer's name, which the surgery cuts (`_conv_call`)."""

    def follows(self, entry: object) -> bool:
        return isinstance(entry, _Width) or entry == -1


def _call_of(grad_fn: object) -> _Call | None:
    metadata = getattr(grad_fn, "metadata", None)
    return metadata.get(_CALL) if isinstance(metadata, dict) else None


def _user_frame() -> FrameType | None:
    """The innermost frame of the model's own code (outside torch and the tracer)."""
    frame = sys._getframe(2)
    while frame is not None and any(part in frame.f_code.co_filename for part in _LIBRARY_PATHS):
        frame = frame.f_back
    return frame


def _code_line(frame: FrameType | None = None) -> str:
    """`file:line `code`` of the model's code that made the current call."""
    frame = frame or _user_frame()
    if frame is None:
        return "an unknown line"
    name = frame.f_code.co_filename
    return f"{name}:{frame.f_lineno} `{linecache.getline(name, frame.f_lineno).strip()}`"


def _size_attribute(frame: FrameType | None, sizes: tuple) -> tuple[nn.Module, str, int] | None:
    """The attribute of the calling module (`self`) that holds a split's written sizes, when the line names
    exactly one attribute with that value (`torch.split(x, self.width, 1)`, `x.split(self.sizes, 1)`), or
    one int attribute that the line divides by a written number into that size (CSPNet's
    `x.split(self.expand_chs // 2, dim=1)`); with that divisor (1 when the line does not divide)."""
    owner = frame.f_locals.get("self") if frame is not None else None
    if not isinstance(owner, nn.Module):
        return None
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    wanted = list(sizes) if len(sizes) > 1 else sizes[0]
    divided = []
    for key, value in vars(owner).items():
        if len(sizes) > 1 or key.startswith("_") or type(value) is not int:
            continue
        # a written number, or an int attribute of the same module (SK's `self.in_channels // self.num_paths`)
        match = re.search(rf"\bself\.{re.escape(key)}\s*//\s*(\d+\b|self\.\w+)", line)
        by = match.group(1) if match else "0"
        divisor = int(by) if by.isdigit() else getattr(owner, by[len("self.") :], 0)
        divisor = divisor if type(divisor) is int else 0
        # exact: the pruned attribute is the pruned size times the divisor, which the line divides back
        if divisor > 1 and value % divisor == 0 and value // divisor == wanted:
            divided.append((key, divisor))
    found = divided + [
        (key, 1)
        for key, value in vars(owner).items()
        if not key.startswith("_")
        and re.search(rf"\bself\.{re.escape(key)}\b", line)
        and (
            (type(value) is int and value == wanted)
            or (
                isinstance(value, (list, tuple))
                and all(type(v) is int for v in value)
                and list(value) == wanted
            )
        )
    ]
    return (owner, *found[0]) if len(found) == 1 else None


_LIBRARY_PATHS = (f"{os.sep}torch{os.sep}", "torch_pruning", f"prunekit{os.sep}surgery{os.sep}", "contextlib")
_VIEWS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape}
_SPLITS = {torch.split, torch.Tensor.split, torch.Tensor.split_with_sizes}
_CHUNKS = {torch.chunk, torch.Tensor.chunk}
_NORMS = {nn.functional.layer_norm: "layer_norm", nn.functional.group_norm: "group_norm"}
_CONVS = {
    nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d,
    nn.functional.conv_transpose1d, nn.functional.conv_transpose2d, nn.functional.conv_transpose3d,
}  # fmt: skip


class _CallRecorder(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.size or getattr(func, "__self__", None) is _SHAPE:
            return _tag_width(out, args, kwargs)
        if func in _VIEWS:
            shape = args[1:] if func is not torch.reshape else args[1:2]
            shape = kwargs.get("shape", shape)
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = shape[0]
            if all(isinstance(s, int) for s in shape):
                _tag(out, _Call("view", tuple(shape), _code_line()))
        elif func in _SPLITS or func in _CHUNKS:
            named = (v for k, v in kwargs.items() if k in _SIZE_KEYWORDS)
            sizes = args[1] if len(args) > 1 else next(named, ())
            sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,)
            if not sizes or not all(isinstance(v, int) for v in sizes):
                return out  # an unusual call: autograd's record alone decides (`_fixed_split`)
            frame = _user_frame()
            written = func in _SPLITS and not all(isinstance(v, _Width) for v in sizes)
            attribute = _size_attribute(frame, sizes) if written else None
            kind = "chunk" if func in _CHUNKS else "split"
            _tag(out[0] if out else None, _Call(kind, sizes, _code_line(frame), attribute))
        elif func is torch.Tensor.__getitem__:
            _tag(out, _Call("slice", (), _code_line()))
        elif func in _NORMS:
            _tag(out, _Call(_NORMS[func], (), _code_line()))
        elif func in _CONVS and not sys._getframe(1).f_code.co_filename.endswith(_CONV_MODULE_FILE):
            # read only for a functional conv (`_functional_conv`); a Conv2d module's call (from
            # torch.nn.modules.conv) is named by its module, so it is not looked at (a frame walk per conv)
            _tag(out, _conv_call(func, args, kwargs))
        elif func is nn.functional.linear:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.dim() > 2:
                _tag(out, _Call("linear", tuple(x.shape), "", source=x.grad_fn))
        return out


_SHAPE = torch.Tensor.shape
_DEPTHWISE_CUTTABLE = {nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d}
_CONV_MODULE_FILE = os.path.join("torch", "nn", "modules", "conv.py")


def _conv_call(func: object, args: tuple, kwargs: dict) -> _Call:
    """A conv call's line; for a depthwise conv (one filter per channel, no bias) whose weight is a buffer of
    the calling module and whose groups follow the width (read from the tensor, or from one attribute the line
    names, `groups=self.channels`), also that buffer and attribute, so the surgery can cut the buffer's
    filters and set the attribute with the channels (timm's BlurPool2d)."""
    frame = _user_frame()
    plain = _Call("conv", (), _code_line(frame))
    x = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    owner = frame.f_locals.get("self") if frame is not None else None
    if (
        func not in _DEPTHWISE_CUTTABLE
        or not isinstance(owner, nn.Module)
        or not isinstance(x, torch.Tensor)
        or not isinstance(weight, torch.Tensor)
        or bias is not None
        or not isinstance(groups, int)
        or x.dim() < 3
        or weight.dim() != x.dim()
        or weight.shape[1] != 1
        or not groups == weight.shape[0] == x.shape[1]
    ):
        return plain
    buffer = next((key for key, b in owner._buffers.items() if b is weight), None)
    attribute = None
    if not isinstance(groups, _Width):
        # the attribute the line names, else the module's one int attribute of that value (timm's BlurPool2d
        # reads `channels = self.channels` a line earlier)
        attribute = _size_attribute(frame, (int(groups),))
        same = [k for k, v in vars(owner).items() if not k.startswith("_") and type(v) is int and v == groups]
        if attribute is None and len(same) == 1:
            attribute = (owner, same[0], 1)
        if attribute is None or attribute[2] != 1:
            return plain  # groups neither follow the width nor come from one attribute the surgery can set
    if buffer is None:
        return plain
    return _Call("conv", (int(groups),), plain.where, attribute, buffer=(owner, buffer))


_SIZE_KEYWORDS = ("split_size_or_sections", "split_size", "split_sizes", "chunks")


def _tag(out: object, call: _Call) -> None:
    grad_fn = getattr(out, "grad_fn", None)
    if grad_fn is not None and _CALL not in grad_fn.metadata:
        grad_fn.metadata[_CALL] = call


def _tag_width(out: object, args: tuple, kwargs: dict) -> object:
    if isinstance(out, torch.Size):
        return torch.Size([_Width(v) if i == 1 else v for i, v in enumerate(out)]) if len(out) > 1 else out
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    ndim = args[0].dim()
    if isinstance(dim, int) and ndim > 1 and dim % ndim == 1:
        return _Width(out)
    return out


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, ChannelGraph]] = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, example_input: torch.Tensor) -> tuple:
    layers = tuple(
        (
            name,
            id(m),  # a replaced submodule of the same shape is a different model
            type(m).__name__,
            getattr(m, "groups", None),
            # the registries read directly: `parameters(recurse=False)` walks generators per module, which
            # doubles the time of a key computed at every cache lookup
            tuple(None if p is None else tuple(p.shape) for p in m._parameters.values()),
            tuple(None if b is None else tuple(b.shape) for b in m._buffers.values()),
        )
        for name, m in model.named_modules()
    )
    return (tuple(example_input.shape[1:]), example_input.dtype, layers)


def graph_of(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """The channel graph of `model` on inputs shaped like `example_input`, traced at most once per model
    object and shape signature (see the module docstring)."""
    emptied = [name for name, m in model.named_modules() if isinstance(m, EMPTY_TYPES)]
    if emptied:
        raise SurgeryError(
            f"this model has residual branches removed whole ({', '.join(emptied[:4])}"
            f"{', ...' if len(emptied) > 4 else ''}); pruning it again is not supported: prune the original "
            "model once, with the whole budget"
        )
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
        self.modules: dict[str, nn.Module] = {
            name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)
        }
        names = {m: name for name, m in model.named_modules()}
        # every module that owns a slot, by name (held weakly: a graph must not keep a model alive)
        self._owners: dict[str, weakref.ref[nn.Module]] = {}
        order: list[str] = []
        # per prunable layer, the size (H·W) of each of its output channels on the example
        self.map_size: dict[str, int] = {}

        def record(module: nn.Module, _inputs: object, output: object) -> None:
            name = names[module]
            if name not in self.map_size:
                order.append(name)
                is_map = isinstance(output, torch.Tensor) and output.dim() > 2
                self.map_size[name] = output[0, 0].numel() if is_map else 1

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
        # splits whose written sizes come from one module attribute: (node, call, part cuts, space)
        size_slots: list[tuple[object, _Call, list[int], int]] = []
        self.size_slots: dict[str, tuple[bool, list[int], int]] = {}
        """Slot name ("module.attribute") → (one int size, not a list?, the equal parts' cuts, the number the
        code divides the attribute by) of each split whose sizes the surgery sets (`surgery.channels.cut`,
        side "size")."""
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
                    call = _call_of(node.grad_fn) if node not in changing else None
                    if call is not None and call.attribute is not None:
                        size_slots.append((node, call, cuts, here))
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

        # Selective-kernel attention (SKNet, timm's SelectiveKernel): logit p·C + c weighs channel c of path p
        for view, softmax, paths, per in _path_attention(nodes):
            handled.update({(view, softmax), (softmax, view)})
            changing.pop(view, None)
            src, dst = space(view, None), space(softmax, None)
            edges += [(src, k * per, dst, 0, per) for k in range(paths)]

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
            if node in changing and not _names_the_cause(spaces[s].frozen):
                # the root cause (a norm, a size written in the code) names the refusal, not a reindexing
                # on the same path (the permutes around a channels-last LayerNorm)
                spaces[s].frozen = changing[node]
            name = _slot_name(dg, node, names)
            if name is not None and isinstance(node.module, nn.Parameter):
                self.param_dims[name] = node.pruning_dim
            if name is not None and width is not None:
                slots.append(Slot(name, side, width, s))
                if isinstance(node.module, nn.Module):
                    self._owners[name] = weakref.ref(node.module)
        _check_channels_last(dg, of_key, spaces)
        for s in spaces:
            if s.width is None:
                s.width = 0

        def size_slot_name(call: _Call) -> str | None:
            owner, attr, _ = call.attribute
            owner_name = names.get(owner)
            return None if owner_name is None else attr if owner_name == "" else f"{owner_name}.{attr}"

        readers = Counter(size_slot_name(call) for _, call, _, _ in size_slots)
        for node, call, cuts, here in size_slots:
            attr, name = call.attribute[1], size_slot_name(call)
            s = canon[find(here)]
            if name is None or readers[name] > 1:
                spaces[s].frozen = ChannelChangingOp(
                    node.grad_fn.name(), cuts[-1], cuts[1],
                    f"a split at {call.where} whose sizes come from self.{attr}, which "
                    + ("is not a module's attribute" if name is None else "another split also reads"),
                    why="so no single pruned value fits it", cause=True, code=call.where,
                )  # fmt: skip
                continue
            self.size_slots[name] = (len(call.sizes) == 1, cuts, call.attribute[2])
            slots.append(Slot(name, "size", cuts[-1], s))
        self._functional_conv_slots(nodes, changing, of_key, spaces, names, slots)

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
            elif isinstance(module, nn.GroupNorm) and module.num_groups > 1:
                # A GroupNorm's statistics are per group: a zeroed channel changes its group's mean and
                # variance, a zeroed whole group only outputs its shift (neutralised by the check), so it
                # loses whole groups (num_groups == C: single channels).
                s_io = of_key.get((node, "io"))
                per = module.num_channels // module.num_groups
                if s_io is not None and per > 1:
                    for k in range(module.num_groups):
                        for p in range(1, per):
                            union(offsets[s_io] + k * per, offsets[s_io] + k * per + p)

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
        _warn_code_sizes(self._groups)

    def _functional_conv_slots(
        self,
        nodes: list,
        changing: Mapping[object, ChannelChangingOp],
        of_key: Mapping[tuple[object, str], int],
        spaces: list[_Space],
        names: Mapping[nn.Module, str],
        slots: list[Slot],
    ) -> None:
        """Slots of each functional depthwise conv on a per-channel weight buffer (`_conv_call`): the
        buffer's filters (side "buffer", cut along dim 0) and the attribute its groups come from (side
        "groups", lowered by the removed count). A buffer or attribute read by two calls is refused: no one
        cut fits both."""
        found = []
        for node in nodes:
            call = _call_of(node.grad_fn) if node.type == ops.OPTYPE.ELEMENTWISE else None
            if call is None or call.buffer is None or node in changing or (node, "io") not in of_key:
                continue
            owner_name = names.get(call.buffer[0])
            found.append((node, call, owner_name))
        readers = Counter(
            (id(call.buffer[0]), key)
            for _, call, _ in found
            for key in (call.buffer[1], call.attribute[1] if call.attribute else None)
            if key is not None
        )
        for node, call, owner_name in found:
            s, width = of_key[(node, "io")], call.sizes[0]
            keys = [call.buffer[1]] + ([call.attribute[1]] if call.attribute else [])
            if owner_name is None or any(readers[(id(call.buffer[0]), k)] > 1 for k in keys):
                if not _names_the_cause(spaces[s].frozen):
                    spaces[s].frozen = ChannelChangingOp(
                        node.grad_fn.name(), width, width,
                        f"a functional convolution at {call.where} whose weight buffer or groups attribute "
                        "another call also reads (or whose module is not part of the model)",
                        why="so no single cut fits it", cause=True, code=call.where,
                    )  # fmt: skip
                continue
            prefix = f"{owner_name}." if owner_name else ""
            slots.append(Slot(prefix + call.buffer[1], "buffer", width, s))
            if call.attribute is not None:
                slots.append(Slot(prefix + call.attribute[1], "groups", width, s))

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
        why = reason.why or "which no channel index map describes, so pruning would silently break the model"
        return (
            f"its channels pass through {reason.describe()}, {why}; leave it out (ratio 0 with ratios=, e.g. "
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


def _check_channels_last(
    dg: tp.DependencyGraph, of_key: Mapping[tuple[object, str], int], spaces: list[_Space]
) -> None:
    """A Linear applied to a tensor of more than two dimensions reads its last dimension: those are channels
    only between such layers (a channels-last MLP's hidden features, fc1 → GELU → fc2), where the surgery
    cuts the Linears as usual and the check zeroes the last dimension. Every other member of such a space
    reads the channels from dimension 1 (a conv, a reshape, a concatenation, a reduction of the last
    dimension) and freezes it, unless a norm or a permute already did."""
    linears = _channels_last_linears(dg)
    if not linears:
        return
    inside = set().union(*linears.values())
    width: dict[int, tuple[object, int]] = {}
    for node in linears:
        for side in ("in", "out"):
            if (node, side) in of_key:
                width[of_key[(node, side)]] = (node, _width(dg, node, side) or 0)
    for (node, _side), s in of_key.items():
        if s not in width or spaces[s].frozen is not None or node in linears or node in inside:
            continue
        linear, features = width[s]
        if _channels_last_elementwise(node, features):
            continue
        name = getattr(dg, "_module2name", {}).get(linear.module, "")
        shape = _call_of(linear.grad_fn).sizes
        op = node.grad_fn.name() if node.grad_fn is not None else type(node.module).__name__
        spaces[s].frozen = ChannelChangingOp(
            op, features, features,
            f"the Linear {name!r} applied to the last dimension of its {len(shape)}-D input {shape}, coupled "
            f"to {_node_label(dg, node)}, which does not hold them there",
            why="so no single channel index describes them (a Linear on the last dimension is prunable only "
            "between Linear layers and element-wise ops, e.g. the hidden features of a channels-last MLP)",
        )  # fmt: skip


def _channels_last_elementwise(node: object, features: int) -> bool:
    """An element-wise op on a channels-last tensor (GELU between two Linears): every activation it reads
    and its output have one shape, whose last dimension is the features."""
    if node.type != ops.OPTYPE.ELEMENTWISE or node.grad_fn is None:
        return False
    out = _output_shape(node.grad_fn, 0)
    if out is None or len(out) < 3 or out[-1] != features:
        return False
    for fn, nr in node.grad_fn.next_functions:
        if fn is not None and type(fn).__name__ != "AccumulateGrad" and _output_shape(fn, nr) != out:
            return False
    return True


def _node_label(dg: tp.DependencyGraph, node: object) -> str:
    name = getattr(dg, "_module2name", {}).get(node.module)
    if name is not None:
        return f"the {type(node.module).__name__} {name!r}"
    return f"the operation {node.grad_fn.name() if node.grad_fn is not None else type(node.module).__name__}"


def _names_the_cause(reason: str | ChannelChangingOp | None) -> bool:
    return isinstance(reason, ChannelChangingOp) and reason.cause


def _warn_code_sizes(groups: Mapping[str, tuple[ChannelGroup, str | ChannelChangingOp | None]]) -> None:
    """One warning per line of the model's code whose written size (a view, split or slice) keeps layers
    from being pruned, naming the line and those layers: the rest of the model prunes as usual."""
    held: dict[str, list[str]] = {}
    for layer, (_, reason) in groups.items():
        if isinstance(reason, ChannelChangingOp) and reason.code:
            held.setdefault(reason.code, []).append(layer)
    for code, layers in held.items():
        warnings.warn(
            f"the sizes written in the model's code at {code} do not follow a pruned width, so the layers "
            f"feeding it keep their channels: {', '.join(layers)}; every other layer can be pruned",
            stacklevel=2,
        )


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


def _path_attention(nodes: list) -> list[tuple[object, object, int, int]]:
    """Selective-kernel attention: (view, softmax, paths P, channels C) for each chain
    ``logits.view(B, P, C // P, 1, 1)`` (C read from the tensor) → ``softmax(dim=1)`` → multiplied into
    ``torch.stack(paths, dim=1)`` → ``sum(dim=1)``, where logit p·C + c weighs channel c of every path.
    Anything else around such a view stays a regrouping (`_channel_changing_nodes`)."""
    found = []
    for node in nodes:
        grad_fn = node.grad_fn
        if node.type != ops.OPTYPE.RESHAPE or grad_fn is None or len(node.outputs) != 1:
            continue
        out = _output_shape(grad_fn, 0)
        ins = [f for f in grad_fn.next_functions if f[0] is not None]
        before = _output_shape(*ins[0]) if len(ins) == 1 else None
        call = _call_of(grad_fn)
        if (
            out is None
            or before is None
            or len(before) != 4
            or len(out) != 5
            or out[1] * out[2] != before[1]
            or tuple(out[3:]) != tuple(before[2:])
            or call is None
            or call.kind != "view"
            or len(call.sizes) != 5
            or not call.follows(call.sizes[2])
        ):
            continue
        softmax = node.outputs[0]
        if (
            _op(softmax) != "SoftmaxBackward0"
            or softmax.grad_fn._saved_dim % 5 != 1
            or len(softmax.outputs) != 1
        ):
            continue
        mul = softmax.outputs[0]
        others = [n for n in mul.inputs if n is not softmax]
        if (
            _op(mul) != "MulBackward0"
            or len(others) != 1
            or _op(others[0]) != "StackBackward0"
            or others[0].grad_fn._saved_dim % 5 != 1
            or len(mul.outputs) != 1
            or _op(mul.outputs[0]) != "SumBackward1"
            or list(mul.outputs[0].grad_fn._saved_dim) != [1]
        ):
            continue
        found.append((node, softmax, int(out[1]), int(out[2])))
    return found


def _op(node: object) -> str:
    return node.grad_fn.name() if node.grad_fn is not None else ""


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
    """Nodes whose channels no index map describes (read from autograd metadata and the calls recorded
    during the trace): element-wise ops whose output channel count differs from an input's, reshapes other
    than a flatten, a flatten or split whose size is written in the code, slices of the channels, splits
    into unequal parts, and norms whose statistics mix channels (LayerNorm, one-group or functional
    GroupNorm)."""
    found = {}
    module_names = getattr(dg, "_module2name", {})
    # the reshapes autograd records inside a Linear on a channels-last tensor fold the leading dimensions
    # and keep the last one (its features): not a regrouping of channels (`_read` checks such spaces)
    inside = set().union(*_channels_last_linears(dg).values())
    layer_fns = {n.grad_fn for n in dg.module2node.values() if isinstance(n.module, PRUNABLE_TYPES)}
    for node in dg.module2node.values():
        grad_fn = node.grad_fn
        if grad_fn is None or node in inside:
            continue
        name = grad_fn.name()
        if name.startswith("Convolution") and node.type == ops.OPTYPE.ELEMENTWISE:
            call = _call_of(grad_fn)
            if call is None or call.buffer is None:  # not a depthwise conv on a buffer the surgery cuts
                found[node] = _functional_conv(grad_fn)
            continue
        norm = _mixing_norm(node, grad_fn, module_names)
        if norm is not None:
            found[node] = norm
            continue
        if node.type not in (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE, ops.OPTYPE.SLICE, ops.OPTYPE.SPLIT):
            continue
        out_shape = _output_shape(grad_fn, 0)
        if node.type == ops.OPTYPE.SPLIT:
            cuts = _split_cuts(grad_fn)
            if cuts:
                fixed = _fixed_split(grad_fn, cuts)
                if fixed is not None:
                    found[node] = fixed
            continue
        if node.type == ops.OPTYPE.SLICE:
            dim = getattr(grad_fn, "_saved_dim", None)
            sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
            if dim == 1 and sizes is not None and out_shape is not None and out_shape[1] != sizes[1]:
                call = _call_of(grad_fn)
                at = f" at {call.where}" if call is not None else ""
                found[node] = ChannelChangingOp(
                    name, int(sizes[1]), int(out_shape[1]),
                    f"a slice of fixed channels x[:, a:b] ({sizes[1]} -> {out_shape[1]} channels){at}",
                    cause=True, code=call.where if call is not None else "",
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
                if flatten or unflatten:
                    fixed = _fixed_view(grad_fn, in_shape, out_shape)
                    if fixed is not None:
                        found[node] = fixed
                    break
                if len(in_shape) == len(out_shape) and in_shape[1] == out_shape[1]:
                    continue
                parameter = _reshaped_parameter(grad_fn, module_names, layer_fns)
                if parameter is not None:
                    found[node] = ChannelChangingOp(
                        name, int(in_shape[1]), int(out_shape[1]),
                        f"a reshape of the parameter {parameter!r} in the forward ({tuple(in_shape)} -> "
                        f"{tuple(out_shape)}: weight standardisation, as in timm's StdConv2d)",
                        why="whose statistics span each filter's input channels, so removing a channel "
                        "changes every filter (pruning would not equal masking)",
                        cause=True,
                    )  # fmt: skip
                    break
                found[node] = ChannelChangingOp(
                    name, int(in_shape[1]), int(out_shape[1]),
                    f"a view/reshape {tuple(in_shape)} -> {tuple(out_shape)} that regroups the channels "
                    "(e.g. a channel shuffle)",
                )  # fmt: skip
                break
            if _moves_channel_dim(grad_fn, len(in_shape)):
                # even when another dimension happens to have the same size as the channels
                found[node] = ChannelChangingOp(
                    name, int(in_shape[1]), int(out_shape[1]),
                    f"a {'permute' if name == 'PermuteBackward0' else 'transpose'} {tuple(in_shape)} -> "
                    f"{tuple(out_shape)} that moves the channel dimension",
                )  # fmt: skip
                break
            if len(in_shape) != len(out_shape) or in_shape[1] in (1, out_shape[1]):
                continue
            note = ""
            if name == "PermuteBackward0":  # the channels move to another dimension (channels-last code)
                note = f"a permute {tuple(in_shape)} -> {tuple(out_shape)} that moves the channel dimension"
            found[node] = ChannelChangingOp(name, int(in_shape[1]), int(out_shape[1]), note)
            break
    return found


def _reshaped_parameter(
    grad_fn: object, module_names: Mapping[nn.Module, str], layer_fns: set[object]
) -> str | None:
    """The parameter (`module.attr`) a reshape's result is computed from with no activation involved (weight
    standardisation: timm's StdConv2d/ScaledStdConv2d normalise each filter in the forward and reshape it
    back to the weight's shape); None for a reshape of activations (its history reaches a conv or linear
    layer's output, `layer_fns`)."""
    out_shape = _output_shape(grad_fn, 0)
    stack, seen, leaves = [fn for fn, _ in grad_fn.next_functions if fn is not None], set(), []
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        if fn in layer_fns or len(seen) > 32:
            return None
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack += [f for f, _ in fn.next_functions if f is not None]
    params = {id(p): f"{name}.{attr}" if name else attr for module, name in module_names.items()
              for attr, p in module._parameters.items() if p is not None}  # fmt: skip
    named = [v for v in leaves if id(v) in params]
    if not named:
        return None
    same = [v for v in named if tuple(v.shape) == out_shape]  # the weight reshaped back to its own shape
    return params[id((same or named)[0])]


def _moves_channel_dim(grad_fn: object, ndim: int) -> bool:
    if grad_fn.name() == "PermuteBackward0":
        dims = getattr(grad_fn, "_saved_dims", None)
        return dims is not None and len(dims) == ndim and dims[1] % ndim != 1
    if grad_fn.name() == "TransposeBackward0":
        pair = (getattr(grad_fn, "_saved_dim0", 0) % ndim, getattr(grad_fn, "_saved_dim1", 0) % ndim)
        return 1 in pair and pair[0] != pair[1]
    return False


def _functional_conv(grad_fn: object) -> ChannelChangingOp:
    """A convolution called as a function (`F.conv2d(x, self.filt, groups=self.channels)`, timm's
    BlurPool2d): its weight is no Conv2d layer's parameter and its sizes (groups, the weight's shape) are not
    a layer's, so the surgery could not cut it with the channels around it."""
    call = _call_of(grad_fn)
    at = f" at {call.where}" if call is not None else ""
    shape = _output_shape(grad_fn, 0) or (0, 0)
    width = int(shape[1]) if len(shape) > 1 else 0
    return ChannelChangingOp(
        grad_fn.name(), width, width, f"a functional convolution (F.conv2d){at}",
        why="whose weight is not a Conv2d layer's parameter, so its weight and groups cannot be cut with the "
        "channels (an nn.Conv2d layer can be; so can a depthwise F.conv2d on a per-channel weight buffer of "
        "its module whose groups follow x.size(1) or one int attribute of that module, as in timm's "
        "BlurPool2d)",
        cause=True,  # no `code`: the warning for sizes written in the code would not describe it
    )  # fmt: skip


def _channels_last_linears(dg: tp.DependencyGraph) -> dict[object, set[object]]:
    """Each Linear layer applied to a tensor of more than two dimensions (it acts on the last one, as in a
    channels-last MLP: `x.permute(0, 2, 3, 1)`, fc1, GELU, fc2), with the graph nodes autograd recorded
    inside it (the reshapes to and from two dimensions, the matrix product, the weight's transpose)."""
    by_fn = {node.grad_fn: node for node in dg.module2node.values() if node.grad_fn is not None}
    found: dict[object, set[object]] = {}
    for node in dg.module2node.values():
        call = _call_of(node.grad_fn) if isinstance(node.module, nn.Linear) else None
        if call is None or call.kind != "linear":
            continue
        inside, seen, stack = set(), set(), [fn for fn, _ in node.grad_fn.next_functions]
        while stack:
            fn = stack.pop()
            if fn is None or fn is call.source or fn in seen:
                continue
            seen.add(fn)
            if fn in by_fn:
                inside.add(by_fn[fn])
            stack += [f for f, _ in fn.next_functions]
        found[node] = inside
    return found


def _fixed_view(
    grad_fn: object, in_shape: Sequence[int], out_shape: Sequence[int]
) -> ChannelChangingOp | None:
    """A flatten (N, C, ...) -> (N, F) or its inverse whose feature/channel size is a number written in the
    code (`view(-1, 2048)`): after pruning it no longer fits. `view(x.size(0), -1)`, `flatten(1)` and sizes
    computed from a width follow the pruned width."""
    call = _call_of(grad_fn)
    if call is None or call.kind != "view" or len(call.sizes) != len(out_shape):
        return None
    if call.follows(call.sizes[1]):
        return None
    shape = ", ".join(str(int(v)) for v in call.sizes)
    return ChannelChangingOp(
        grad_fn.name(), int(in_shape[1]), int(out_shape[1]),
        f"a view/reshape to ({shape}) at {call.where}, whose size {int(call.sizes[1])} is written in the "
        "code",
        why="so it would not fit the pruned width (compute it from the tensor, e.g. x.view(x.size(0), -1) or "
        "x.flatten(1), to make these layers prunable)",
        cause=True, code=call.where,
    )  # fmt: skip


def _fixed_split(grad_fn: object, cuts: list[int]) -> ChannelChangingOp | None:
    """A split along the channels that pruning cannot follow, or None when its equal parts follow the width
    (`chunk(k)`, or sizes computed from the tensor's width: `_read` then ties position p of every part)."""
    parts = [b - a for a, b in zip(cuts, cuts[1:], strict=False)]
    equal = len(parts) > 1 and len(set(parts)) == 1
    call = _call_of(grad_fn)
    if call is None:
        # not seen by the recorder: only a halving is read as a chunk, as before the recorder existed
        if len(parts) == 2 and equal:
            return None
        return ChannelChangingOp(
            grad_fn.name(), cuts[-1], parts[0], f"a split of the channels into the fixed parts {parts}"
        )
    follows = call.kind == "chunk" or all(call.follows(v) for v in call.sizes)
    if follows and equal:
        return None
    if call.attribute is not None and equal:
        return None  # sizes read from one attribute (`self.width`): the surgery sets it (a "size" slot)
    if follows or call.attribute is not None:
        # Unequal parts would be independent units, and a plan could empty one part (no layer of its own
        # guards it); equal parts lose the same positions, so a part empties only with the whole layer.
        return ChannelChangingOp(
            grad_fn.name(), cuts[-1], parts[0],
            f"a split of the channels into the unequal parts {parts} at {call.where}",
            why="whose parts cannot follow a pruned width together (only equal parts, which lose the same "
            "positions, can)",
            cause=True, code=call.where,
        )  # fmt: skip
    sizes = [int(v) for v in call.sizes]
    return ChannelChangingOp(
        grad_fn.name(), cuts[-1], parts[0],
        f"a split of the channels into the parts {parts} at {call.where}, whose size"
        f"{'s' if len(sizes) > 1 else ''} {sizes if len(sizes) > 1 else sizes[0]} "
        f"{'are' if len(sizes) > 1 else 'is'} written in the code",
        why="so the parts would not follow the pruned width (split with "
        f"torch.chunk(x, {len(parts)}, dim=1), compute the sizes from x.size(1), or read them from one "
        "attribute of the module named in that line (e.g. self.width), which the surgery updates, to make "
        "these layers prunable)",
        cause=True, code=call.where,
    )  # fmt: skip


def _mixing_norm(node: object, grad_fn: object, module_names: Mapping) -> ChannelChangingOp | None:
    """A norm whose statistics mix channels, so that a zeroed channel changes the others' outputs: any
    LayerNorm (its statistics span the channels, channels-last or after a flatten), a GroupNorm module
    with one group, and a functional F.group_norm (its group count is written in the code). A GroupNorm
    module with more groups loses whole groups instead (`_read`); InstanceNorm is per channel."""
    name = grad_fn.name()
    if name not in ("NativeLayerNormBackward0", "NativeGroupNormBackward0"):
        return None
    module = node.module if isinstance(node.module, nn.Module) else None
    call = _call_of(grad_fn)
    label = repr(module_names[module]) if module in module_names else ""
    if not label:
        # a norm module whose forward wraps the functional call (LayerNorm2d's permutes): name it by its
        # weight, which autograd holds
        weights = {id(getattr(fn, "variable", None)) for fn, _ in grad_fn.next_functions}
        owner = next(
            (m for m in module_names if any(id(w) in weights for w in m.parameters(recurse=False))), None
        )
        label = repr(module_names[owner]) if owner is not None else ""
    at = f" at {call.where}" if call is not None else ""
    if name == "NativeLayerNormBackward0":
        width = int(getattr(grad_fn, "_saved_normalized_shape", [0])[-1])
        return ChannelChangingOp(
            name, width, width, f"the LayerNorm {label}{at}".replace("  ", " "),
            why="whose statistics span all channels, so removing one changes every other channel's output",
            cause=True,
        )  # fmt: skip
    groups, width = int(grad_fn._saved_group), int(grad_fn._saved_C)
    if isinstance(module, nn.GroupNorm) and groups > 1:
        return None
    what = "a functional F.group_norm"
    if isinstance(module, nn.GroupNorm):
        what = f"the GroupNorm {label} (num_groups=1)"
    return ChannelChangingOp(
        name, width, width, f"{what}{at}".replace("  ", " "),
        why="whose statistics span all channels, so removing one changes every other channel's output"
        if groups == 1
        else "whose group count is written in the code (use nn.GroupNorm, whose groups prunekit cuts whole)",
        cause=True,
    )  # fmt: skip


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
