"""The Method protocol, the method registry, and what every filter-scoring method shares.

A method is a small class with a registry name, a dataclass of typed options and a parsed `Selection`
(which layers lose how much). The pipeline calls its hooks in this order and never names a method:

    prepare(model, calib)                    once, on the dense weights
    penalty / after_backward / after_step    every step of the sparsify stage (training hooks)
    prune(model, calib, stage) -> Pruned     default: surgery.apply(plan(model, calib))

A budget (``target_macs`` / ``speedup`` / ``target_density`` in the selection) is met by `methods.budget`,
which moves the method's declared `knob`. See docs/architecture.md for a complete example method.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError, unknown_name
from prunekit.methods.budget import BudgetResult, meet_budget
from prunekit.methods.options import coerce
from prunekit.methods.selection import Selection, align_ratios, parse_selection, pruned_count, unalignable
from prunekit.surgery.graph import channel_groups, graph_of
from prunekit.surgery.masks import MaskSet
from prunekit.surgery.plan import MaskPlan, Plan

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage

#: A channel plan as methods build it: kept output indices (sorted) per layer name. `Plan` (from
#: `surgery.plan`) is the tagged union a method may return: this mapping, a `LowRankPlan` or a `MaskPlan`.
ChannelKeep = dict[str, list[int]]
#: Calibration inputs: one batch (N, C, H, W) as the model expects it (normalised). ``calib[:1]`` is the
#: example input used to trace the model; data-driven methods also score on it.
Calib = Tensor
#: What a budget counts: MACs of the physically smaller model, or the density of nonzero weights.
BudgetKind = Literal["macs", "density"]


@dataclass
class Pruned:
    """What `Method.prune` returns: the smaller model (a copy), the masks of zeros it must keep while
    fine-tuning (recorded on the model, or None), method details for the run summary (JSON-ready), whether
    the run's fine-tune stage should still run (False when pruning already fine-tuned, e.g. HRank's
    layer-wise schedule), and the budget search that chose the knob (None without a budget)."""

    model: nn.Module
    masks: MaskSet | None = None
    details: dict[str, Any] = field(default_factory=dict)
    needs_finetune: bool = True
    budget: BudgetResult | None = None


@dataclass(frozen=True)
class Schedule:
    """A method's default schedule: what `prunekit compare` and the demo use when the user gives none.
    Epochs of the run's training set (``sparsify_epochs=0``: one-shot); `sparsify` overrides the run's
    TrainConfig for the sparsify stage (e.g. Adam at a constant lr); `options` are the method options of
    that schedule; `label` names the configuration in tables."""

    sparsify_epochs: int = 0
    finetune_epochs: int = 10
    sparsify: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""


class Method:
    """Base class of every method. Subclasses set `name` and `Options` and override the hooks they need.

    `knob` names the one scalar a budget moves (an option name, or ``"ratio_scale"`` for methods whose
    allocation scales per-layer ratios); `knob_range` bounds it, and cost must not grow with it.
    `presets` are named selections (e.g. published compress-rates); `schedule` the default schedule.
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    knob: ClassVar[str | None] = None
    knob_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    presets: ClassVar[dict[str, str]] = {}
    schedule: ClassVar[Schedule] = Schedule()
    #: The short schedule of `prunekit demo` (LeNet-5, a few epochs), or None to leave the method out.
    demo: ClassVar[Schedule | None] = None
    #: Whether a MAC budget with ``round_to=auto+depth`` may remove whole residual blocks: only where the
    #: allocation is `ScoringMethod`'s budget search (`latency_budget.fastest_aligned`).
    supports_depth: ClassVar[bool] = False

    def __init__(self, options: Any = None, selection: Selection | None = None) -> None:
        self.options = self.Options() if options is None else options
        self.selection = self.resolve_selection(selection)
        if self.selection is not None and self.selection.depth and not self.supports_depth:
            able = ", ".join(n for n in list_methods() if _METHODS[n].supports_depth)
            raise ConfigError(
                f"method {self.name!r} does not remove whole residual blocks: round_to=auto+depth works "
                f"with {able}; use round_to=auto"
            )

    # ------------------------------------------------------------ configuration

    def resolve_selection(self, selection: Selection | None) -> Selection | None:
        """The selection this method runs with; refuse forms it cannot honour. Default: budgets only."""
        if selection is not None and (selection.rules or selection.sequence or selection.uniform is not None):
            raise ConfigError(
                f"method {self.name!r} chooses its own widths; it takes no per-layer ratios "
                f"({selection.spec!r}), only a budget (target_macs=, speedup= or target_density=)"
            )
        return selection

    def budget_kind(self) -> BudgetKind | None:
        """What this configured method's budget counts; None when it cannot take one."""
        return "macs" if self.knob is not None else None

    def with_knob(self, value: float) -> Method:
        """A copy of this method with its knob at `value` (the budget search's trial)."""
        clone = copy.copy(self)
        clone.options = dataclasses.replace(self.options, **{self.knob: value})  # type: ignore[misc]
        clone.selection = None
        return clone

    #: How the options that set a sparsify stage the method declares in steps (`sparsify_steps`) follow a
    #: shortened run (recipes' ``--epochs-scale``): ``"increment"`` options grow by 1/scale (a ramp reaches
    #: its end in proportionally fewer updates), ``"interval"`` options shrink by the scale (at least 1).
    step_options: ClassVar[dict[str, str]] = {}

    def shortened(self, scale: float) -> Method:
        """This method with the stage it declares in steps about `scale` times as long, for smoke runs;
        a method that declares no steps is returned as it is (its stage follows the run's epochs)."""
        if scale == 1.0 or not self.step_options:
            return self
        if not 0 < scale < 1:
            raise ConfigError(f"a shortened schedule needs a scale in (0, 1], got {scale:g}")
        values = {
            key: max(1, round(getattr(self.options, key) * scale))
            if kind == "interval"
            else getattr(self.options, key) / scale
            for key, kind in self.step_options.items()
        }
        clone = copy.copy(self)
        clone.options = dataclasses.replace(self.options, **values)
        return clone

    def calib_images(self) -> int:
        """How many training images the run draws for `prepare`/`prune` (tracing, data-driven scores)."""
        return 128

    # ------------------------------------------------------------ stages

    def prepare(self, model: nn.Module, calib: Calib | None) -> None:
        """Decide anything fixed before training, on the dense weights (e.g. the filters TPP pushes down)."""

    def sparsify_steps(self, steps_per_epoch: int) -> int | None:
        """Length of the sparsify stage in optimiser steps when the method decides it (a penalty schedule
        that ends by itself); None: the run's sparsify epochs decide."""
        return None

    def penalty(self, model: nn.Module, step: int = 0) -> Tensor | None:
        """Term added to the loss in the sparsify stage; None when the method adds none."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Between backward() and the optimiser step: gradient edits (e.g. a nuclear-norm sub-gradient)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimiser step of the sparsify stage (projections, growing penalties)."""

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        """What to remove: a channel mapping, a `LowRankPlan` or a `MaskPlan` (`surgery.plan`)."""
        raise NotImplementedError(f"method {self.name!r} does not produce a plan")

    def prune(self, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
        """A pruned copy of `model`. Default: `plan` carried out by `surgery.apply`, whatever its kind; a
        mask plan's masks are returned so the fine-tune keeps them at zero. `stage` carries the run's data
        and fine-tune config for methods whose pruning trains; None outside a run."""
        from prunekit.surgery import apply

        plan = self.plan(model, calib)
        pruned = apply(model, plan, example_input(calib, self.name))
        masks = MaskSet(plan.masks) if isinstance(plan, MaskPlan) else None
        return Pruned(pruned, masks=masks, budget=getattr(self, "budget", None))

    @classmethod
    def needs_sparsify(cls) -> bool:
        """True when the method trains with a penalty or per-step edits before pruning."""
        return any(
            getattr(cls, hook) is not getattr(Method, hook)
            for hook in ("penalty", "after_backward", "after_step")
        )

    @classmethod
    def summary_line(cls) -> str:
        """One line describing the method: the first line of its docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.name


_METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: makes `cls` available as ``create_method(cls.name, **options)``."""
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise unknown_name("method", name, list(_METHODS)) from None


def create_method(name: str, selection: Selection | str | float | None = None, **options: Any) -> Method:
    """Build method `name`; option values given as strings (CLI, YAML) are converted to the declared types.
    `selection` (parsed or an expression) says which layers lose how much, or the budget to meet."""
    cls = method_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Options) if f.init}
    hints = typing.get_type_hints(cls.Options)
    values = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(
                f"method {name!r} has no option {key!r}; valid options: {', '.join(sorted(fields)) or 'none'}"
                " (`prunekit prune --method " + name + " --help` describes them)"
            )
        values[key] = coerce(value, hints[key], f"option {key!r} of method {name!r}")
    if selection is not None and not isinstance(selection, Selection):
        selection = parse_selection(selection)
    return cls(cls.Options(**values), selection)


def example_input(calib: Calib | None, method: str) -> Tensor:
    if not isinstance(calib, Tensor) or calib.dim() < 2 or len(calib) == 0:
        raise ConfigError(
            f"method {method!r} needs calibration inputs: a non-empty batch tensor (N, C, H, W) of the "
            "model's inputs, used to trace the model and find its prunable layers"
        )
    return calib[:1]


# ---------------------------------------------------------------- prunable layers and their coupling


@dataclass(frozen=True)
class LayerGroup:
    """Layers whose output channels are tied (e.g. by a residual add): they lose channel units together.

    `out_channels` counts the group's units (what a ratio applies to). ``unit_of[member][c]`` is the unit of
    member's output channel c; None means every member has one channel per unit in unit order (a plain
    residual group). Members may differ in width when channels pass through a concatenation, a chunk or a
    grouped conv (`surgery.graph.ChannelGroup`)."""

    members: tuple[str, ...]
    out_channels: int
    unit_of: Mapping[str, tuple[int, ...]] | None = None

    def kept_channels(self, kept_units: Sequence[int], scores: Tensor | None = None) -> dict[str, list[int]]:
        """Each member's kept output channels when the group keeps `kept_units` (sorted).

        A member of an uneven group (one branch of a concatenation under a residual add, as in
        Inception-ResNet) owns only some units. When all of them go, a layer with no channels would
        disconnect the network: the member keeps back its best unit by `scores` (one per unit; without
        them its first) and the weakest other kept unit goes instead (without scores the last), so the
        group still loses as many units as asked and the budget's count stays right."""
        if self.unit_of is None or not kept_units:  # no unit kept: the group goes whole (`selection.EMPTY`)
            return dict.fromkeys(self.members, list(kept_units))
        keep = set(kept_units)

        def strength(unit: int) -> float:
            return float(scores[unit]) if scores is not None else -unit

        for member in self.members:
            units = self.unit_of[member]
            if not units or not keep.isdisjoint(units):
                continue
            keep.add(max(units, key=strength))
            # Only a unit every member still holds another kept unit besides can be given up for it.
            sole = {next(iter(held)) for held in (keep.intersection(self.unit_of[m]) for m in self.members)
                    if len(held) == 1}  # fmt: skip
            spare = keep - sole
            if spare:
                keep.discard(min(spare, key=strength))
        return {m: [c for c, u in enumerate(self.unit_of[m]) if u in keep] for m in self.members}

    def unit_scores(self, member: str, scores: Tensor) -> Tensor:
        """One member's per-channel scores summed per unit (a unit may hold several of its channels)."""
        if self.unit_of is None:
            return scores
        index = torch.tensor(self.unit_of[member], dtype=torch.long, device=scores.device)
        if scores.shape != index.shape:
            raise ConfigError(
                f"layer {member!r}: {scores.numel()} channel scores for {index.numel()} output channels"
            )
        return torch.zeros(self.out_channels, dtype=scores.dtype, device=scores.device).index_add_(
            0, index, scores
        )


def prunable_groups(model: nn.Module, example: Tensor) -> list[LayerGroup]:
    """Prunable conv/linear layers grouped by coupling, in execution order of each group's first member."""
    return [
        LayerGroup(group.members, group.units, None if group.aligned else dict(group.unit_of))
        for group in channel_groups(model, example)
    ]


def no_prunable_layer(model: nn.Module, example: Tensor, asked: str) -> ConfigError:
    """The error for a model none of whose conv/linear layers can lose output channels (e.g. weight-
    standardised convs): what was `asked`, then the engine's reasons for the first layers, the classifier's
    last (expected, so the others say what to change)."""
    graph = graph_of(model, example)
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    why = {name: graph.exclusion(name) or "" for name in layers}
    shown = sorted(layers, key=lambda name: why[name].startswith("its output channels are the model's"))[:3]
    return ConfigError(
        f"{asked}: none of the model's {len(layers)} conv/linear layers can lose output channels; "
        + "; ".join(f"{name!r}: {why[name]}" for name in shown)
    )


def group_ratio(group: LayerGroup, ratios: dict[str, float]) -> float:
    values = {name: ratios.get(name, 0.0) for name in group.members}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{name}:{ratio:g}" for name, ratio in values.items())
        raise ConfigError(
            f"layers {', '.join(group.members)} share their output channels (residual coupling) and are "
            f"pruned together, but were given different ratios ({listed}); give them one ratio"
        )
    return next(iter(values.values()))


def couple_ratios(
    groups: Sequence[LayerGroup], ratios: Mapping[str, float], named: set[str], from_list: bool
) -> dict[str, float]:
    """The coupling rule every method follows: the layers of a coupled group keep one channel set, so they
    get one ratio.

    `named`: the layers the selection names; `from_list`: the ratios come from a list expression.

    - a glob naming some members (``"*layer1*:0.5"`` misses the stem conv that shares layer1's channels)
      sets the ratio of the whole group; two different named ratios in one group are refused;
    - a list expression (one entry per layer, as the papers' masked presets are written, e.g. HRank's
      compress-rates) may give a group's members different entries: the group is pruned at the smallest of
      them, since a shared channel can only go when every writer drops it, and a warning names the group.
    """
    ratios = dict(ratios)
    lowered: list[str] = []
    for group in groups:
        chosen = {ratios.get(m, 0.0) for m in group.members if m in named}
        if from_list and len(chosen) > 1:
            smallest = min(chosen)
            if max(chosen) > 0:
                lowered.append(f"{group.members[0]} (+{len(group.members) - 1} coupled) at {smallest:g}")
            chosen = {smallest}
        if len(chosen) == 1:
            ratios.update(dict.fromkeys(group.members, chosen.pop()))
        group_ratio(group, ratios)
    if lowered:
        warnings.warn(
            "layers that share output channels through residual adds got different ratios from the list "
            f"expression; pruned at their smallest: {'; '.join(lowered)}",
            stacklevel=3,
        )
    return ratios


# ---------------------------------------------------------------- scoring and selection


def select_kept(scores: Tensor, ratio: float, layer: str = "<layer>") -> list[int]:
    """Sorted indices kept after removing the ``int(ratio * n)`` lowest scores; among equal scores the
    lower index goes first."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be one value per channel, got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise PrunekitError(f"layer {layer!r}: channel scores are not finite (NaN/inf in weights or data)")
    n_pruned = pruned_count(ratio, scores.numel(), layer)
    order = torch.sort(scores, stable=True).indices
    return sorted(order[n_pruned:].tolist())


def layer_weight(model: nn.Module, layer: str) -> Tensor:
    """The layer's weight as (out_channels, everything else), detached."""
    module = model.get_submodule(layer)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise ConfigError(f"layer {layer!r} is a {type(module).__name__}, not a Conv2d or Linear")
    return module.weight.detach().flatten(1)


def plan_from_ratios(
    groups: Sequence[LayerGroup],
    ratios: Mapping[str, float],
    score: Callable[[str], Tensor | None] | None,
    select: Callable[[Tensor, float, str], list[int]] = select_kept,
) -> Plan:
    """The allocation meets the criterion: each group loses ``int(ratio * n)`` channels, those with the
    lowest summed `score` over its members (a member may have no score: None). Without `score` the last
    channels go, which is enough to count a configuration's cost."""
    plan: ChannelKeep = {}
    for group in groups:
        ratio = group_ratio(group, dict(ratios))
        if ratio == 0:
            continue
        summed = None
        if score is None:
            kept = list(range(group.out_channels - pruned_count(ratio, group.out_channels, group.members[0])))
        else:
            # Scores are summed per channel unit, read through each member's channel map (members of a
            # concatenation, a chunk or a grouped conv differ in width and order).
            scored = [
                group.unit_scores(name, s)
                for name, s in ((name, score(name)) for name in group.members)
                if s is not None
            ]
            if not scored:
                raise ConfigError(
                    f"no channel scores for {', '.join(group.members)}; score them before planning"
                )
            summed = torch.stack(scored).sum(0)
            kept = select(summed, ratio, group.members[0])
        plan.update(group.kept_channels(kept, summed))
    return plan


@dataclass
class ScoringOptions:
    """Options of every per-layer scoring method."""

    rates: str = field(
        default="0.5",
        metadata={"help": "layer selection: a ratio, globs 'conv*:0.5', a list '[0.1]*3+[0.5]', or a budget"},
    )

    def __post_init__(self) -> None:
        parse_selection(self.rates)  # syntax errors now, with the caret


class ScoringMethod(Method):
    """A one-shot criterion: scores each layer's output channels and keeps the best per layer.

    The allocation (which layers lose how much: `layer_ratios`, from the selection, scaled by a budget) is
    separate from the criterion (`score`). For a coupled group the score of a channel is the sum of its
    members' scores, so every member's evidence counts equally and one kept set serves them all.
    """

    Options: ClassVar[type] = ScoringOptions
    options: ScoringOptions
    knob = "ratio_scale"
    demo = Schedule(finetune_epochs=3)
    supports_depth = True

    def __init__(self, options: Any = None, selection: Selection | None = None) -> None:
        super().__init__(options, selection)
        self.budget: BudgetResult | None = None

    def resolve_selection(self, selection: Selection | None) -> Selection:
        if selection is None or selection.only_round_to:
            default = parse_selection(self.presets.get(self.options.rates.strip(), self.options.rates))
            if selection is None:
                return default
            selection = default.with_round_to(selection.round_to, selection.round_to_auto)
        self.options = dataclasses.replace(self.options, rates=selection.spec)  # the record says what ran
        return selection

    def with_knob(self, value: float) -> Method:
        raise NotImplementedError("ratio-scaling methods meet budgets inside their allocation")

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor | None:
        """One value per output channel of `layer`; the lowest are removed."""
        raise NotImplementedError

    def select(self, scores: Tensor, ratio: float, layer: str) -> list[int]:
        return select_kept(scores, ratio, layer)

    def entries(self, model: nn.Module, groups: Sequence[LayerGroup]) -> list[tuple[str, ...]]:
        """What the entries of a list expression map to, in order: one prunable layer each by default."""
        return [(name,) for group in groups for name in group.members]

    def layer_ratios(
        self, model: nn.Module, example: Tensor, groups: list[LayerGroup]
    ) -> tuple[dict[str, float], BudgetResult | None]:
        return layer_ratios(model, example, groups, self.selection, self.entries(model, groups))

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        example = example_input(calib, self.name)
        groups = prunable_groups(model, example)
        ratios, self.budget = self.layer_ratios(model, example, groups)
        return plan_from_ratios(groups, ratios, lambda name: self.score(model, name, calib), self.select)


def layer_ratios(
    model: nn.Module,
    example: Tensor,
    groups: list[LayerGroup],
    selection: Selection,
    entries: Sequence[tuple[str, ...]] | None = None,
) -> tuple[dict[str, float], BudgetResult | None]:
    """Per-layer ratios of `selection` (list expressions mapped onto `entries`, by default one per prunable
    layer), coupled groups given one ratio (`couple_ratios`); with a budget, the scaled ratios that meet it
    and the search."""
    names = [name for group in groups for name in group.members]
    if entries is None:
        entries = [(name,) for name in names]
    if selection.sequence is not None:
        # An entry that names no layer (HRank's VGG entry 13) still takes its place in the list.
        keys = [convs[0] if convs else f"<entry {k}>" for k, convs in enumerate(entries)]
        per_entry = selection.ratios(keys)
        ratios = dict.fromkeys(names, 0.0)
        for key, convs in zip(keys, entries, strict=True):
            ratios.update(dict.fromkeys(convs, per_entry[key]))
    else:
        ratios = selection.ratios(names)
    ratios = couple_ratios(groups, ratios, selection.selected(names), selection.sequence is not None)
    widths = [(group.members, group.out_channels) for group in groups]
    round_to = selection.round_to_for(n for members, n in widths if ratios.get(members[0], 0.0) > 0)
    if round_to is not None:
        _check_round_to_fits(widths, ratios, round_to)
    if selection.budget is None:
        # Glob rules and list entries name their layers: a layer they prune that cannot align is refused.
        named = bool(selection.rules) or selection.sequence is not None
        return align_ratios(widths, ratios, round_to, strict=named), None
    if selection.budget.kind == "target_density":
        raise ConfigError(
            "target_density budgets the nonzero weights of element-wise (masked) pruning; this method "
            "removes whole channels: give target_macs= or speedup= instead"
        )
    if selection.budget.counts == "latency":
        from prunekit.methods.latency_budget import meet_latency_budget

        result = meet_latency_budget(model, example, selection.budget, ratios, round_to=round_to)
    else:
        # A measured (auto) round_to also picks, among the aligned widths that meet the budget, fast ones.
        fastest = selection.round_to_auto
        depth = selection.depth
        result = meet_budget(
            model, example, selection.budget, ratios, round_to=round_to, fastest=fastest, depth=depth
        )
    return result.ratios, result


def _check_round_to_fits(
    widths: Sequence[tuple[Sequence[str], int]], ratios: Mapping[str, float], r: int
) -> None:
    """round_to wider than every selected layer is refused; a few narrow layers are left whole, with a
    warning that names them."""
    selected = [(members, n) for members, n in widths if ratios.get(members[0], 0.0) > 0]
    narrow = unalignable(selected, r)
    if selected and len(narrow) == len(selected):
        raise ConfigError(
            f"round_to={r} leaves nothing to prune: every selected layer has at most {r} output channels "
            f"(widest: {max(n for _, n in selected)}); give a smaller round_to"
        )
    if narrow:
        warnings.warn(
            f"round_to={r}: {len(narrow)} layer group(s) have at most {r} output channels and stay whole: "
            f"{', '.join(narrow[:6])}{', ...' if len(narrow) > 6 else ''}",
            stacklevel=4,
        )
