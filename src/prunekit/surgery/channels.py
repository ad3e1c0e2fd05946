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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.func import functional_call

from prunekit.errors import SurgeryError
from prunekit.measure.cost import cost
from prunekit.models.probe import evaluating
from prunekit.surgery.edits import ChannelEdit, record
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
    _refuse_emptied(graph, removals, planned, removed)

    pruned = _copy_and_cut(model, removals, graph)
    _check_widths(pruned, graph, kept, widths_before, final)
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
    every = set().union(*(gone for gone, _ in unit_sets.values())) if unit_sets else set()
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
) -> None:
    for (name, side), gone in removals.items():
        slot = graph.slot(name, side)
        if slot is not None and len(gone) >= slot.width and side in ("out", "io"):
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
    is then copied, so the result shares nothing with `model`."""
    modules = dict(model.named_modules())
    memo: dict[int, object] = {}
    for name, _side in removals:
        owner = modules.get(name)
        if owner is not None:
            for t in (*owner.parameters(recurse=False), *owner.buffers(recurse=False)):
                memo[id(t)] = t
    originals = {id(t) for t in (*model.parameters(), *model.buffers())}
    pruned = copy.deepcopy(model, memo)
    cut(pruned, removals, graph)
    with torch.no_grad():
        for module in pruned.modules():
            for key, param in module._parameters.items():
                if param is not None and id(param) in originals:
                    module._parameters[key] = nn.Parameter(param.detach().clone(), param.requires_grad)
            for key, buffer in module._buffers.items():
                if buffer is not None and id(buffer) in originals:
                    module._buffers[key] = buffer.clone()
    return pruned


def cut(model: nn.Module, removals: Mapping[tuple[str, str], Sequence[int]], graph: ChannelGraph) -> None:
    """Remove the listed channels (original indices, each side of each module once) from `model` in place."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    grouped: dict[str, dict[str, Sequence[int]]] = {}
    for (name, side), gone in removals.items():
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
            "groups; a grouped conv can only lose whole groups or the same positions in every group"
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
    counts = Counter(indices)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
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
            if getattr(module, attr, None) == 0:
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
    downstream. Used through `torch.func.functional_call`, so no model is copied or changed."""
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


def _zeroing_hooks(
    model: nn.Module, removals: Mapping[tuple[str, str], Sequence[int]]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that zero the removed output channels of every module that has any: with biases and
    BatchNorm shifts neutralised this is the same as zeroing their filters, without copying weights."""
    modules = dict(model.named_modules())
    hooks = []
    for (name, side), gone in removals.items():
        module = modules.get(name)
        if module is None or side == "in" or not isinstance(module, _ZEROED_OUTPUTS):
            continue
        index = torch.as_tensor(list(gone), dtype=torch.long)

        def zero(_m: nn.Module, _i: object, out: torch.Tensor, index: torch.Tensor = index) -> torch.Tensor:
            return out.index_fill(1, index.to(out.device), 0.0)

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

    def run_reference() -> torch.Tensor:
        hooks = _zeroing_hooks(model, removals)
        try:
            with evaluating(model), torch.no_grad():
                return functional_call(model, reference, (example_input,), strict=False)
        finally:
            for h in hooks:
                h.remove()

    def run_candidate() -> torch.Tensor:
        return _check_runs(_Substituted(pruned, candidate), graph, example_input)

    expected, got = run_reference(), run_candidate()
    if _close(expected, got):
        return
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
        run_reference()
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
            stay = sorted(set(range(ref.shape[1])) - set(gone))
            ref = ref[:, stay]
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


class _Substituted(nn.Module):
    """`model` run with some of its tensors replaced (`torch.func.functional_call`), as a module."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner = model
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.inner, self.state, (x,), strict=False)


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
