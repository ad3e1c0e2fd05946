"""Apply a channel plan: physically remove output channels, with every coupled layer following, then prove
the result is sound or raise `SurgeryError` naming the layer.

A channel plan maps a Conv2d/Linear layer name to the output-channel indices to KEEP. Layers coupled to
a planned one (a residual stage, a depthwise conv and its producer, concatenation partners) follow it;
two planned layers of one coupled group must agree.
"""

from __future__ import annotations

import copy
import difflib
import traceback
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from prunekit.errors import SurgeryError
from prunekit.measure.cost import cost
from prunekit.models.probe import evaluating
from prunekit.surgery.edits import ChannelEdit, record
from prunekit.surgery.empty import is_empty, replace_emptied
from prunekit.surgery.graph import CUSTOMIZED_PRUNERS, PRUNABLE_TYPES, ChannelGraph, graph_of

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
    return _apply(model, plan, example_input, check_masking=True, report=False)[0]


def apply_with_report(
    model: nn.Module, plan: ChannelPlan, example_input: torch.Tensor, *, check_masking: bool = True
) -> tuple[nn.Module, ApplyReport]:
    """`apply`, plus the widths and MACs before and after. `model` itself is never modified; the copy's
    edit history (`surgery.history`) gains this plan. `check_masking` (default) proves the pruned copy
    equals `model` with the removed channels zeroed (see `check_equals_masking`)."""
    pruned, report = _apply(model, plan, example_input, check_masking=check_masking, report=True)
    assert report is not None
    return pruned, report


def _apply(
    model: nn.Module, plan: ChannelPlan, example_input: torch.Tensor, *, check_masking: bool, report: bool
) -> tuple[nn.Module, ApplyReport | None]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    kept = {name: _kept_indices(name, spec, layers, model) for name, spec in plan.items()}

    graph = graph_of(model, example_input)
    widths_before = {name: graph.out_channels(name) for name in graph.modules}
    planned = [name for name in graph.order if name in kept] + [
        name for name in kept if name not in graph.order
    ]
    for name in planned:
        reason = graph.exclusion(name)
        if reason is not None:
            raise SurgeryError(f"cannot prune layer {name!r}: {reason}")
    removed = {name: sorted(set(range(widths_before[name])) - set(kept[name])) for name in planned}
    atoms = _removed_units(graph, planned, removed, kept)
    removals = graph.removed(atoms)
    final = {name: set(removals.get((name, "out"), removals.get((name, "io"), ()))) for name in graph.modules}
    final = {name: gone for name, gone in final.items() if gone}
    _refuse_emptied(graph, removals, planned, removed, kept)

    pruned = _copy_and_cut(model, removals, graph)
    _check_widths(pruned, graph, kept, widths_before, final)
    emptied = [name for name in planned if not kept[name]]
    if emptied:
        _refuse_disconnected(pruned, emptied, example_input)
    if check_masking and removals:
        # one forward of the pruned model serves both checks: that it runs, and that it equals masking
        check_equals_masking(model, pruned, removals, example_input, graph)
    else:
        _check_runs(pruned, graph, example_input)
    record(pruned, ChannelEdit(kept, tuple(example_input.shape[1:])))
    if not report:
        return pruned, None
    before = graph.dense_cost(model, tuple(example_input.shape))
    after = cost(pruned, tuple(example_input.shape))
    modules = dict(pruned.named_modules())
    widths_after = {name: _out_width(modules[name]) for name in graph.modules}
    return pruned, ApplyReport(
        widths_before=widths_before,
        widths_after=widths_after,
        planned=tuple(planned),
        coupled=tuple(n for n in graph.order if n in final and n not in kept),
        params_before=before.params,
        params_after=after.params,
        macs_before=before.macs,
        macs_after=after.macs,
    )


def _refuse_disconnected(pruned: nn.Module, emptied: list[str], example_input: torch.Tensor) -> None:
    """A model whose output no longer depends on its input (every path through an emptied layer) is
    refused: emptying is for a branch beside another path, as a residual block's."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(example_input.shape, generator=generator).to(example_input)
    try:
        with evaluating(pruned), torch.no_grad():
            a, b = pruned(example_input), pruned(probe)
    except RuntimeError as exc:  # an op between the emptied layer and the next one needs channels (a pool)
        raise SurgeryError(
            f"removing every channel of {', '.join(map(repr, emptied))} leaves an operation with no channels "
            f"to work on ({str(exc).splitlines()[0]}){_where(exc)}: only a branch beside another path (a "
            "residual block) can go whole; keep at least one channel"
        ) from None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b):
        raise SurgeryError(
            f"removing every channel of {', '.join(map(repr, emptied))} leaves the model's output "
            "independent of its input: only a branch beside another path (a residual block) can go whole; "
            "keep at least one channel"
        )


def _out_width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _removed_units(
    graph: ChannelGraph, planned: list[str], removed: dict[str, list[int]], kept: dict[str, list[int]]
) -> torch.Tensor:
    """The graph-wide channel units the plan removes; refuses plans that split a unit (a grouped conv's
    or a chunk's tied positions) or whose coupled layers disagree."""
    unit_sets: dict[str, tuple[set[int], set[int]]] = {}
    for name in planned:
        atoms = graph.atoms(graph.slot(name, "out") or graph.slot(name, "io"))
        gone = set(atoms[removed[name]].tolist()) if removed[name] else set()
        stay = set(atoms[kept[name]].tolist())
        if gone & stay:
            raise SurgeryError(_split_unit_message(graph, name, removed[name], gone & stay))
        unit_sets[name] = (gone, stay)
    every = set().union(*(gone for gone, _ in unit_sets.values())) if unit_sets else set()
    kept_somewhere = set().union(*(stay for _, stay in unit_sets.values())) if unit_sets else set()
    if not every & kept_somewhere:
        # No layer removes a unit another keeps (a layer's own split was refused above); the pairwise
        # search below, quadratic in the planned layers, only runs to name the disagreeing pair.
        return torch.tensor(sorted(every), dtype=torch.long)
    for name in planned:
        gone = unit_sets[name][0]
        for layer in planned:
            if layer == name or not gone & unit_sets[layer][1]:
                continue
            atoms = graph.atoms(graph.slot(layer, "out") or graph.slot(layer, "io"))
            hit = sorted(torch.isin(atoms, torch.tensor(sorted(gone))).nonzero().flatten().tolist())
            raise SurgeryError(
                f"layers {layer!r} and {name!r} are coupled (residual add, concatenation, split or grouped/"
                f"depthwise conv) and must keep the same channels, but the kept channels of {name!r} remove "
                f"{hit} from {layer!r} while the plan for {layer!r} removes {removed[layer]}; "
                "give them one index set (or plan only one of them)"
            )
    return torch.tensor(sorted(every), dtype=torch.long)


def _split_unit_message(graph: ChannelGraph, name: str, gone: list[int], split: set[int]) -> str:
    ties = torch.tensor(sorted(split))
    for slot in graph.slots:
        conv = graph.modules.get(slot.name)
        if not isinstance(conv, nn.Conv2d) or conv.groups == 1 or slot.side == "io":
            continue
        if not bool(torch.isin(graph.atoms(slot), ties).any()):
            continue
        side = "output" if slot.side == "out" else "input"
        size = (conv.out_channels if side == "output" else conv.in_channels) // conv.groups
        return (
            f"pruning {name!r} removes {side} channels {gone} of the grouped conv {slot.name!r} "
            f"(groups={conv.groups}, {size} channels per group); a grouped conv can only lose whole groups "
            "or the same positions in every group: plan those, or leave it out (ratio 0 for the layers "
            f"coupled to it with ratios=, e.g. ratios='{name}:0')"
        )
    return (
        f"pruning {name!r} removes channels {gone} that are tied to channels it keeps: its output passes "
        "through a chunk into equal halves or a channel shuffle, whose parts must lose the same positions; "
        f"plan tied channels together (prunekit's methods do) or leave it out (ratios='{name}:0')"
    )


def _refuse_emptied(
    graph: ChannelGraph,
    removals: dict[tuple[str, str], list[int]],
    planned: list[str],
    removed: dict[str, list[int]],
    kept_by_plan: dict[str, list[int]],
) -> None:
    """A layer emptied as a side effect of the plan is refused; a plan that empties a layer itself (a
    residual branch removed whole, `surgery.empty`) may empty it and what is coupled to it."""
    for (name, side), gone in removals.items():
        slot = graph.slot(name, side)
        if slot is not None and len(gone) >= slot.width and side in ("out", "io"):
            if any(not kept_by_plan[p] for p in planned):
                continue  # the plan empties a layer on purpose: checked for exactness and reach below
            cause = next((p for p in planned if removed[p]), planned[0] if planned else name)
            raise SurgeryError(
                f"pruning {cause!r} as planned removes all {slot.width} output channels of the coupled "
                f"layer {name!r}; keep at least one"
            )


_PRUNERS = tp.DependencyGraph()
for _type, _pruner in CUSTOMIZED_PRUNERS.items():
    _PRUNERS.register_customized_layer(_type, _pruner)


def _copy_and_cut(
    model: nn.Module, removals: Mapping[tuple[str, str], Sequence[int]], graph: ChannelGraph
) -> nn.Module:
    """A deep copy of `model` with `removals` cut. The tensors the cut replaces are not copied first (on a
    large model, copying weights only to slice them doubles the time); every tensor the cut leaves in place
    is then copied (through the same memo, so tied tensors stay tied), and the result shares nothing with
    `model`."""
    originals = {id(t) for t in (*model.parameters(), *model.buffers())}
    memo: dict[int, object] = {}
    pruned = _copy_structure(model, memo)
    cut(pruned, removals, graph)
    replace_emptied(pruned)
    for module in pruned.modules():
        for table in (module._parameters, module._buffers):
            for key, tensor in table.items():
                if tensor is not None and id(tensor) in originals:
                    table[key] = copy.deepcopy(tensor, memo)
    return pruned


def _copy_structure(module: nn.Module, memo: dict[int, object]) -> nn.Module:
    """`copy.deepcopy(module, memo)`, except that parameters and buffers are shared, not copied. Plain
    modules are rebuilt from their `__dict__` directly: `deepcopy`'s generic reduce/reconstruct per module
    and per empty hook dict is most of the copy's time on a model of many small layers (MobileNetV2: 850
    modules, 12 ms). A module class with its own copy or pickling protocol goes through `deepcopy`."""
    found = memo.get(id(module))
    if found is not None:
        return found  # type: ignore[return-value]
    cls = type(module)
    if not _plain_module(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state: dict[str, object] = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            state[key] = {n: None if c is None else _copy_structure(c, memo) for n, c in value.items()}
        elif key in ("_parameters", "_buffers"):
            state[key] = dict(value)
        elif type(value) in _ATOMIC or (type(value) is tuple and all(type(v) in _ATOMIC for v in value)):
            state[key] = value
        elif type(value) in (dict, OrderedDict, set) and not value:
            state[key] = type(value)()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__setstate__(state)  # as `deepcopy` does; the allowed ones only fill defaults for old pickles
    return new


_ATOMIC = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.layout)
_PLAIN: dict[type, bool] = {}


def _plain_module(cls: type) -> bool:
    if cls not in _PLAIN:
        _PLAIN[cls] = (
            cls.__getstate__ is nn.Module.__getstate__
            and cls.__setstate__ in (nn.Module.__setstate__, nn.modules.conv._ConvNd.__setstate__)
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and not hasattr(cls, "__deepcopy__")
            and not any("__slots__" in vars(c) for c in cls.__mro__)
        )
    return _PLAIN[cls]


def cut(model: nn.Module, removals: Mapping[tuple[str, str], Sequence[int]], graph: ChannelGraph) -> None:
    """Remove the listed channels (original indices, each side of each module once) from `model` in place."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    grouped: dict[str, dict[str, Sequence[int]]] = {}
    for (name, side), gone in removals.items():
        if side == "size":
            _set_split_sizes(model, modules, name, gone, graph)
            continue
        if side in ("buffer", "groups"):
            _cut_functional_conv(model, modules, name, side, gone)
            continue
        module = modules.get(name)
        if isinstance(module, nn.Conv2d) and 1 < module.groups and side != "io":
            grouped.setdefault(name, {})[side] = gone
            continue
        if module is None and name in params:
            owner_name, _, attr = name.rpartition(".")
            owner = modules[owner_name] if owner_name else model
            pruner = tp.pruner.function.ParameterPruner(pruning_dim=graph.param_dims.get(name, -1))
            setattr(owner, attr, pruner.prune_out_channels(params[name], list(gone)))
            continue
        if module is None:
            continue
        if isinstance(module, nn.GroupNorm):
            _cut_group_norm(name, module, gone)
            continue
        pruner = _PRUNERS.get_pruner_of_module(module)
        if pruner is None:
            raise SurgeryError(
                f"layer {name!r} ({type(module).__name__}) would lose channels but cannot be cut"
            )
        fn = pruner.prune_in_channels if side == "in" else pruner.prune_out_channels
        try:
            fn(module, list(gone))
        except Exception as exc:  # torch-pruning raises bare assertions and index errors
            raise SurgeryError(f"torch-pruning failed to cut layer {name!r}: {exc}") from exc
    for name, sides in grouped.items():
        _cut_grouped(name, modules[name], sides.get("out", ()), sides.get("in", ()))


def _cut_grouped(name: str, conv: nn.Conv2d, out_gone: Sequence[int], in_gone: Sequence[int]) -> None:
    groups, a, b = conv.groups, conv.in_channels // conv.groups, conv.out_channels // conv.groups
    keep_out = sorted(set(range(conv.out_channels)) - set(out_gone))
    keep_in = sorted(set(range(conv.in_channels)) - set(in_gone))
    out_groups = sorted({c // b for c in keep_out})
    in_groups = sorted({c // a for c in keep_in})
    out_local = {g: [c % b for c in keep_out if c // b == g] for g in out_groups}
    in_local = {g: [c % a for c in keep_in if c // a == g] for g in in_groups}
    if (
        out_groups != in_groups
        or len({tuple(v) for v in out_local.values()}) > 1
        or len({tuple(v) for v in in_local.values()}) > 1
    ):
        raise SurgeryError(
            f"the grouped conv {name!r} (groups={groups}) would lose different channels in different "
            "groups; a grouped conv can only lose whole groups or the same positions in every group: plan "
            f"those, or leave it out (ratio 0 for it and the layers coupled to it with ratios=, e.g. "
            f"ratios='{name}:0')"
        )
    local_in = in_local[in_groups[0]]
    with torch.no_grad():
        weight = conv.weight.detach()[keep_out][:, local_in].clone()
        conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        if conv.bias is not None:
            conv.bias = nn.Parameter(
                conv.bias.detach()[keep_out].clone(), requires_grad=conv.bias.requires_grad
            )
    conv.groups, conv.out_channels, conv.in_channels = len(out_groups), len(keep_out), len(keep_in)


def _set_split_sizes(
    model: nn.Module, modules: Mapping[str, nn.Module], name: str, gone: Sequence[int], graph: ChannelGraph
) -> None:
    """Set the attribute a split reads its written sizes from (`torch.split(x, self.width, 1)`, or a list of
    equal sizes) to the pruned sizes; the equal parts lose the same positions (`graph` ties them). An
    attribute the code divides (`self.expand_chs // 2`) becomes the pruned size times that divisor."""
    single, cuts, divisor = graph.size_slots[name]
    owner_name, _, attr = name.rpartition(".")
    owner = modules[owner_name] if owner_name else model
    lost = torch.bucketize(torch.as_tensor(list(gone)), torch.as_tensor(cuts[1:]), right=True)
    counts = torch.bincount(lost, minlength=len(cuts) - 1).tolist()
    sizes = [b - a - n for a, b, n in zip(cuts[:-1], cuts[1:], counts, strict=True)]
    if min(sizes) < 1:
        raise SurgeryError(
            f"pruning would leave a part of the split that reads self.{attr} ({owner_name or 'the model'}) "
            "with no channels; keep at least one channel in every part (a lower ratio, with ratios=, for "
            "the layers writing into it)"
        )
    old = getattr(owner, attr)
    setattr(owner, attr, sizes[0] * divisor if single else type(old)(sizes))


def _cut_functional_conv(
    model: nn.Module, modules: Mapping[str, nn.Module], name: str, side: str, gone: Sequence[int]
) -> None:
    """A functional depthwise conv on a per-channel weight buffer (timm's BlurPool2d): the buffer loses the
    removed channels' filters (side "buffer"); the attribute its groups come from loses as many (side
    "groups"). One filter per channel and no bias, so this equals zeroing those channels."""
    owner_name, _, attr = name.rpartition(".")
    owner = modules[owner_name] if owner_name else model
    if side == "groups":
        setattr(owner, attr, getattr(owner, attr) - len(set(gone)))
        return
    buffer = owner._buffers[attr]
    keep = torch.ones(buffer.shape[0], dtype=torch.bool)
    keep[list(gone)] = False
    # the same registry entry: a non-persistent buffer stays non-persistent
    owner._buffers[attr] = buffer.index_select(0, keep.nonzero().flatten().to(buffer.device))


def _cut_group_norm(name: str, norm: nn.GroupNorm, gone: Sequence[int]) -> None:
    """Remove whole groups from a GroupNorm (torch-pruning's pruner keeps `num_groups`, which then splits
    the remaining channels into other groups)."""
    per = norm.num_channels // norm.num_groups
    gone_set = set(gone)
    lost = {c // per for c in gone_set}
    if len(gone_set) != per * len(lost):
        raise SurgeryError(
            f"the GroupNorm {name!r} (num_groups={norm.num_groups}, {per} channels per group) would lose "
            "part of a group; it can only lose whole groups: leave the layers feeding it out (ratio 0 with "
            "ratios=)"
        )
    keep = [c for c in range(norm.num_channels) if c not in gone_set]
    with torch.no_grad():
        if norm.affine:
            norm.weight = nn.Parameter(norm.weight.detach()[keep].clone(), norm.weight.requires_grad)
            norm.bias = nn.Parameter(norm.bias.detach()[keep].clone(), norm.bias.requires_grad)
    norm.num_groups -= len(lost)
    norm.num_channels = len(keep)


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
        indices = spec.tolist()
    else:
        # checked per type, not per element: a plan names thousands of channels per prune
        if isinstance(spec, (str, bytes)) or not all(issubclass(t, int) for t in set(map(type, spec))):
            raise SurgeryError(f"layer {name!r}: kept channels must be a sequence of ints; got {spec!r}")
        indices = list(map(int, spec))
    # An empty list removes the layer's every channel: allowed where another path remains (checked once the
    # model is cut, `_refuse_disconnected`).
    indices.sort()
    if indices and (indices[0] < 0 or indices[-1] >= width):
        bad = sorted({i for i in indices if not 0 <= i < width})
        raise SurgeryError(f"layer {name!r} has {width} output channels (0..{width - 1}); plan keeps {bad}")
    if len(set(indices)) < len(indices):
        duplicates = sorted(i for i, n in Counter(indices).items() if n > 1)
        raise SurgeryError(f"layer {name!r}: plan lists channels {duplicates} more than once")
    return indices


def _unknown_layer(name: str, layers: dict[str, nn.Module], model: nn.Module) -> SurgeryError:
    other = dict(model.named_modules()).get(name)
    if other is not None:
        return SurgeryError(
            f"layer {name!r} is a {type(other).__name__}; a channel plan names Conv2d or Linear layers"
        )
    close = difflib.get_close_matches(name, list(layers), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return SurgeryError(f"no Conv2d or Linear layer named {name!r} in the model{hint}")


def _check_widths(
    pruned: nn.Module,
    graph: ChannelGraph,
    kept: dict[str, list[int]],
    widths_before: dict[str, int],
    final: dict[str, set[int]],
) -> None:
    modules = dict(pruned.named_modules())
    for name in graph.order:
        width = _out_width(modules[name])
        expected = widths_before[name] - len(final.get(name, ()))
        if name in kept and width != len(kept[name]):
            raise SurgeryError(
                f"layer {name!r} has {width} output channels after pruning; the plan keeps {len(kept[name])}"
            )
        if width != expected:
            raise SurgeryError(
                f"layer {name!r} went from {widths_before[name]} to {width} output channels, but the plan "
                f"and its coupled layers account for {expected}"
            )
    for name, module in pruned.named_modules():
        for attr in ("out_channels", "out_features", "num_features"):
            if getattr(module, attr, None) == 0 and not is_empty(module):
                raise SurgeryError(f"layer {name!r} ended with zero channels ({attr}=0)")


def _check_runs(pruned: nn.Module, graph: ChannelGraph, example_input: torch.Tensor) -> torch.Tensor:
    """Run the pruned model on the example (eval mode, no autograd); refuse it if it fails or its output
    shape changed. Returns the output."""
    try:
        with evaluating(pruned), torch.no_grad():
            out = pruned(example_input)
    except RuntimeError as exc:
        raise SurgeryError(
            f"the pruned model no longer runs on the example input ({exc}){_where(exc)}; an operation "
            "that depends on the channel count (a hard-coded view/reshape size, a fixed split) or one "
            "torch-pruning treats as element-wise although it changes the channel count (e.g. a functional "
            "F.pad shortcut, which cannot be pruned safely: use prunekit.models.layers.ZeroPadShortcut) "
            "is probably on the path; leave the layers that feed it out (ratio 0 for them with ratios=)"
        ) from exc
    shape = tuple(out.shape)
    if graph.output_shape is not None and shape[1:] != graph.output_shape[1:]:
        raise SurgeryError(
            f"the pruned model's output has shape {shape}, the original's {graph.output_shape}"
        )
    return out


def _where(exc: BaseException) -> str:
    """Where in the model's own code a failing forward stopped (the first frame outside torch)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames or "/prunekit/surgery/" in frames[-1].filename:
        return ""
    frame = frames[-1]
    return f" at {frame.filename}:{frame.lineno} `{(frame.line or '').strip()}`"


# ---------------------------------------------------------------- pruning equals masking


def _neutral_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replacement tensors that zero every bias and BatchNorm shift (running mean and β): a channel that is
    zero then stays zero through the model, so a removed channel and a zeroed one are indistinguishable
    downstream. Swapped in for one forward (`_substituted`), so no model is copied."""
    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            state[prefix + "bias"] = torch.zeros_like(bias)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            state[prefix + "running_mean"] = torch.zeros_like(module.running_mean)
    return state


def _masked_state(
    model: nn.Module, removals: Mapping[tuple[str, str], Sequence[int]], graph: ChannelGraph
) -> dict[str, torch.Tensor]:
    """Replacement tensors for the writers of removed channels that have no output to zero: option-A
    shortcuts stop writing into (or reading from) removed channels; an unwrapped parameter (a per-channel
    scale or embedding) is zeroed there."""
    from prunekit.models.layers import ZeroPadShortcut

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for (name, side), gone in removals.items():
        module = modules.get(name)
        if module is None and name in params:
            param = params[name].detach()
            dim = graph.param_dims.get(name, param.dim() - 1) % param.dim()
            idx = torch.as_tensor(list(gone), dtype=torch.long, device=param.device)
            state[name] = state.get(name, param).index_fill(dim, idx, 0.0)
        elif isinstance(module, ZeroPadShortcut):
            src, dst = state.get(f"{name}.src", module.src), state.get(f"{name}.dst", module.dst)
            index = dst if side == "out" else src
            keep = ~torch.isin(index, torch.as_tensor(list(gone), device=index.device))
            state[f"{name}.src"], state[f"{name}.dst"] = src[keep], dst[keep]
    return state


def _narrowed_convs(
    model: nn.Module, removals: Mapping[tuple[str, str], Sequence[int]], graph: ChannelGraph
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """For the plain convolutions that lose output channels: stand-in weights (and zero biases) of only
    their kept filters, and the kept indices. Computing a removed channel only to zero it is most of the
    masked forward's work; `_zeroing_hooks` puts the kept outputs back at their places among zeros, which
    is exactly the masked layer's output. Only exact `nn.Conv1d/2d/3d` with one group qualify: a subclass
    or a parametrised conv may compute its weight from all filters together. A conv whose removed filters
    cost fewer than `_NARROW_MIN_MACS` on the example keeps its full forward: copying the kept filters and
    spreading the outputs would cost more than it saves (ShuffleNetV2's small 1×1 convs)."""
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    kept: dict[str, torch.Tensor] = {}
    for (name, side), gone in removals.items():
        module = modules.get(name)
        if side != "out" or type(module) not in _NARROWABLE or module.groups != 1:
            continue
        saved = len(gone) * module.weight[0].numel() * graph.map_size.get(name, 0)
        if saved < _NARROW_MIN_MACS:
            continue
        keep = torch.ones(module.out_channels, dtype=torch.bool)
        keep[list(gone)] = False
        index = keep.nonzero().flatten().to(module.weight.device)
        state[f"{name}.weight"] = module.weight.detach().index_select(0, index)
        if module.bias is not None:
            state[f"{name}.bias"] = torch.zeros_like(module.bias[: len(index)])
        kept[name] = index
    return state, kept


_NARROWABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NARROW_MIN_MACS = 4_000_000  # per example; ~0.2 ms of one CPU thread, where the narrowing pays for itself


def _zeroing_hooks(
    model: nn.Module,
    removals: Mapping[tuple[str, str], Sequence[int]],
    narrowed: Mapping[str, torch.Tensor] | None = None,
) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that zero the removed output channels of every module that has any: with biases and
    BatchNorm shifts neutralised this is the same as zeroing their filters, without copying weights. A
    module in `narrowed` (name → kept indices, see `_narrowed_convs`) computed only its kept channels; its
    hook spreads them over a zero output of the full width."""
    modules = dict(model.named_modules())
    narrowed = narrowed or {}
    hooks = []
    for (name, side), gone in removals.items():
        module = modules.get(name)
        if module is None or side == "in" or not isinstance(module, _ZEROED_OUTPUTS):
            continue
        if name in narrowed:

            def spread(
                m: nn.Module, _i: object, out: torch.Tensor, index: torch.Tensor = narrowed[name]
            ) -> torch.Tensor:
                full = out.new_zeros(out.shape[0], m.out_channels, *out.shape[2:])
                return full.index_copy_(1, index, out)

            hooks.append(module.register_forward_hook(spread))
            continue
        index = torch.as_tensor(list(gone), dtype=torch.long)
        # a Linear's features are its output's last dimension (dimension 1 only of a 2-D output; a
        # channels-last MLP's Linear outputs (N, H, W, features))
        dim = -1 if isinstance(module, nn.Linear) else 1

        def zero(
            _m: nn.Module, _i: object, out: torch.Tensor, index: torch.Tensor = index, dim: int = dim
        ) -> None:
            # In place: the output of these modules is a fresh tensor, and the forward runs without autograd;
            # a copy of every output would cost as much as the zeroing.
            out.index_fill_(dim, index.to(out.device), 0.0)

        hooks.append(module.register_forward_hook(zero))
    return hooks


# Modules whose output channels are the channels their slot removes (a shortcut has its own masking).
_ZEROED_OUTPUTS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU)


def check_equals_masking(
    model: nn.Module,
    pruned: nn.Module,
    removals: Mapping[tuple[str, str], Sequence[int]],
    example_input: torch.Tensor,
    graph: ChannelGraph,
) -> None:
    """Raise `SurgeryError` unless `pruned`, with biases and BatchNorm shifts neutralised, equals `model`
    neutralised and with the removed channels zeroed, on `example_input`; the message names the first
    Conv2d/Linear (in execution order) whose kept outputs differ. This catches what a shape check cannot:
    a forward whose result depends on the channel count, or channels mapped to the wrong partners.
    Also runs the pruned model's one checking forward (`_check_runs`)."""
    reference = {**_neutral_state(model), **_masked_state(model, removals, graph)}
    candidate = _neutral_state(pruned)
    narrow_state, narrowed = _narrowed_convs(model, removals, graph)

    def run_reference(narrow: bool = True) -> torch.Tensor:
        hooks = _zeroing_hooks(model, removals, narrowed if narrow else None)
        state = {**reference, **narrow_state} if narrow else reference
        try:
            with evaluating(model), torch.no_grad(), _substituted(model, state):
                return model(example_input)
        finally:
            for h in hooks:
                h.remove()

    def run_candidate() -> torch.Tensor:
        with _substituted(pruned, candidate):
            return _check_runs(pruned, graph, example_input)

    expected, got = run_reference(), run_candidate()
    if _close(expected, got):
        return
    if expected.is_floating_point() and expected.dtype != torch.float64:
        if _equal_in_float64(model, pruned, removals, example_input, graph):
            return  # float32 rounding amplified through a deep stack, not channels mapped wrongly
    # Find the first layer that differs (only now: hooks and copies of every output cost time).
    seen_ref: dict[str, torch.Tensor] = {}
    seen_new: dict[str, torch.Tensor] = {}

    def keep(store: dict[str, torch.Tensor], name: str):  # noqa: ANN202
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and name not in store:
                store[name] = out.detach().clone()

        return hook

    hooks = [
        m.register_forward_hook(keep(seen_ref, n)) for n, m in model.named_modules() if n in graph.modules
    ]
    hooks += [
        m.register_forward_hook(keep(seen_new, n)) for n, m in pruned.named_modules() if n in graph.modules
    ]
    try:
        run_reference(narrow=False)  # the hooks above read each layer's own output at its full width
        run_candidate()
    finally:
        for h in hooks:
            h.remove()
    for name in graph.order:
        if name not in seen_ref or name not in seen_new:
            continue
        ref, new = seen_ref[name], seen_new[name]
        gone = removals.get((name, "out"), removals.get((name, "io"), ()))
        if gone:
            dim = -1 if isinstance(graph.modules[name], nn.Linear) else 1  # as in `_zeroing_hooks`
            stay = torch.tensor(sorted(set(range(ref.shape[dim])) - set(gone)), dtype=torch.long)
            ref = ref.index_select(dim, stay.to(ref.device))
        if not _close(ref, new):
            raise SurgeryError(
                f"pruning is not the same as masking from layer {name!r} on: with biases and BatchNorm "
                "shifts neutralised, its kept outputs differ from the original's with the removed channels "
                f"zeroed ({_gap(ref, new)}); an operation before it depends on the channel count or maps "
                f"channels in a way the dependency graph does not see; leave the layers feeding {name!r} out "
                "(ratio 0 for them with ratios=)"
            )
    raise SurgeryError(
        "pruning is not the same as masking at the model's output: with biases and BatchNorm shifts "
        "neutralised, the pruned model's output differs from the original's with the removed channels "
        f"zeroed ({_gap(expected, got)}); an operation after the last conv/linear layer depends on the "
        "channel count"
    )


@contextmanager
def _substituted(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """`model` with the parameters and buffers named in `state` replaced (every alias of a tied tensor too),
    restored on exit. What `torch.func.functional_call` does, without its per-call walks over the whole
    model (untying, strict checks, `Module.__setattr__`), which cost a tenth of a small model's forward."""
    modules = dict(model.named_modules())
    by_id: dict[int, torch.Tensor] = {}
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = modules[owner_name]
        original = owner._parameters.get(attr, owner._buffers.get(attr))
        if original is not None:
            by_id[id(original)] = tensor
    swapped: list[tuple[dict[str, torch.Tensor | None], str, torch.Tensor]] = []
    try:
        for module in modules.values():
            for table in (module._parameters, module._buffers):
                for key, original in table.items():
                    if original is not None and id(original) in by_id:
                        swapped.append((table, key, original))
                        table[key] = by_id[id(original)]
        yield
    finally:
        for table, key, original in reversed(swapped):
            table[key] = original


def _equal_in_float64(
    model: nn.Module,
    pruned: nn.Module,
    removals: Mapping[tuple[str, str], Sequence[int]],
    example_input: torch.Tensor,
    graph: ChannelGraph,
) -> bool:
    """The masking check once more, on float64 copies: a pruned conv sums fewer terms than the masked one,
    and in float32 a deep network (neutralised BatchNorms no longer rescale) can amplify that rounding past
    the tolerance. Run only after a float32 mismatch, so a correct prune costs nothing more."""
    dense, cut = copy.deepcopy(model).double(), copy.deepcopy(pruned).double()
    x = example_input.double()
    hooks = _zeroing_hooks(dense, removals, None)
    try:
        reference = {**_neutral_state(dense), **_masked_state(dense, removals, graph)}
        with evaluating(dense), evaluating(cut), torch.no_grad():
            with _substituted(dense, reference):
                expected = dense(x)
            with _substituted(cut, _neutral_state(cut)):
                got = cut(x)
    except Exception:  # a model that will not run in float64 keeps the float32 verdict
        return False
    finally:
        for h in hooks:
            h.remove()
    return isinstance(got, torch.Tensor) and _close(expected, got)


def _close(reference: torch.Tensor, candidate: torch.Tensor) -> bool:
    if reference.shape != candidate.shape:
        return False
    if not reference.numel():
        return True
    scale = float(reference.abs().max())
    return bool(torch.allclose(candidate, reference, rtol=1e-3, atol=1e-4 * scale + 1e-30))


def _gap(reference: torch.Tensor, candidate: torch.Tensor) -> str:
    if reference.shape != candidate.shape:
        return f"shape {tuple(candidate.shape)} instead of {tuple(reference.shape)}"
    return f"max difference {float((candidate - reference).abs().max()):.3g}"
