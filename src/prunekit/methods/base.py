"""The Method protocol, the method registry, and what every filter-scoring method shares.

A method is a small class with a registry name and a dataclass of typed options. The pipeline calls the
hooks it defines: ``prepare`` once before anything else, ``penalty``/``after_step`` during the sparsify
stage (only for methods that override them), and ``plan`` to decide what to remove.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError, unknown_name
from prunekit.methods.options import coerce
from prunekit.methods.selection import BudgetResult, Selection, meet_budget, parse_selection, pruned_count
from prunekit.surgery.graph import prunable_layers

#: Channel plan: kept output indices (sorted) per layer name. Only `surgery` turns it into shapes.
Plan = dict[str, list[int]]
#: Calibration inputs: one batch (N, C, H, W) as the model expects it (normalised). ``calib[:1]`` is the
#: example input used to trace the model; data-driven methods also score on it.
Calib = Tensor


class Method:
    """Base class of every method. Subclasses set `name` and `Options` and override the hooks they need."""

    name: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: Any = None) -> None:
        self.options = self.Options() if options is None else options

    def prepare(self, model: nn.Module, calib: Calib | None) -> None:
        """Decide anything fixed before training (e.g. the filters a regulariser pushes down)."""

    def penalty(self, model: nn.Module) -> Tensor | None:
        """Term added to the loss in the sparsify stage; None when the method adds none."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimiser step of the sparsify stage (projections, growing penalties)."""

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        raise NotImplementedError(f"method {self.name!r} does not produce a plan")

    @classmethod
    def needs_sparsify(cls) -> bool:
        """True when the method trains with a penalty or per-step edits before pruning."""
        return cls.penalty is not Method.penalty or cls.after_step is not Method.after_step


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


def create_method(name: str, **options: Any) -> Method:
    """Build method `name`; option values given as strings (CLI, YAML) are converted to the declared types."""
    cls = method_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Options) if f.init}
    hints = typing.get_type_hints(cls.Options)
    values = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(
                f"method {name!r} has no option {key!r}; valid options: {', '.join(sorted(fields)) or 'none'}"
            )
        values[key] = coerce(value, hints[key], f"option {key!r} of method {name!r}")
    return cls(cls.Options(**values))


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
    """Layers whose output channels are tied (e.g. by a residual add): they keep one common index set."""

    members: tuple[str, ...]
    out_channels: int


def prunable_groups(model: nn.Module, example: Tensor) -> list[LayerGroup]:
    """Prunable conv/linear layers grouped by coupling, in execution order of each group's first member."""
    groups: dict[tuple[str, ...], int] = {}
    for layer in prunable_layers(model, example):
        groups.setdefault(layer.group, layer.out_channels)
    return [LayerGroup(members, out_channels) for members, out_channels in groups.items()]


def group_ratio(group: LayerGroup, ratios: dict[str, float]) -> float:
    values = {name: ratios.get(name, 0.0) for name in group.members}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{name}:{ratio:g}" for name, ratio in values.items())
        raise ConfigError(
            f"layers {', '.join(group.members)} share their output channels (residual coupling) and are "
            f"pruned together, but were given different ratios ({listed}); give them one ratio"
        )
    return next(iter(values.values()))


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


@dataclass
class ScoringOptions:
    """Options of every per-layer scoring method: `rates` is a layer selection (methods.selection)."""

    rates: str = "0.5"

    def __post_init__(self) -> None:
        self.selection: Selection = parse_selection(self.rates)


class ScoringMethod(Method):
    """A one-shot criterion: scores each layer's output channels and keeps the best per layer.

    For a coupled group the score of a channel is the sum of its members' scores, so every member's
    evidence counts equally and one kept set serves them all.
    """

    Options: ClassVar[type] = ScoringOptions
    options: ScoringOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.budget: BudgetResult | None = None

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor:
        """One value per output channel of `layer`; the lowest are removed."""
        raise NotImplementedError

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        example = example_input(calib, self.name)
        groups = prunable_groups(model, example)
        ratios, self.budget = layer_ratios(model, example, groups, self.options.selection)
        plan: Plan = {}
        for group in groups:
            ratio = group_ratio(group, ratios)
            if ratio == 0:
                continue
            scores = torch.stack([self.score(model, name, calib) for name in group.members]).sum(0)
            plan.update(dict.fromkeys(group.members, select_kept(scores, ratio, group.members[0])))
        return plan


def layer_ratios(
    model: nn.Module,
    example: Tensor,
    groups: list[LayerGroup],
    selection: Selection,
) -> tuple[dict[str, float], BudgetResult | None]:
    """Per-layer ratios of `selection`; with a budget, the scaled ratios that meet it and the search."""
    names = [name for group in groups for name in group.members]
    ratios = selection.ratios(names)
    # A glob that names some members of a coupled group (e.g. "*layer1*" misses the stem conv that shares
    # layer1's channels) sets the ratio of the whole group; two different named ratios still conflict.
    named = selection.selected(names)
    for group in groups:
        chosen = {ratios[m] for m in group.members if m in named}
        if len(chosen) == 1:
            ratios.update(dict.fromkeys(group.members, chosen.pop()))
    if selection.budget is None:
        return ratios, None
    for group in groups:
        group_ratio(group, ratios)  # refuse disagreeing coupled layers before searching
    result = meet_budget(model, example, selection.budget, ratios)
    return result.ratios, result
