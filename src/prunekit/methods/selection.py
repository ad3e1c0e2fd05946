"""The layer-selection language every method shares: which layers lose how many output channels.

Three forms, comma separated items (specs/tpp.md §3, specs/hrank.md §2.1):

- glob rules ``"*layer*.conv1:0.9,features.*:0.5"``: fnmatch on module names, the last matching rule wins;
- HRank list expressions ``"[0.1]+[0.60]*35+[0.0]*2"``: one entry per prunable layer, in execution order;
- a single float ``"0.5"``: the same ratio everywhere.

Any of them may carry one budget item, ``target_macs=0.5`` (fraction of the dense MACs to keep) or
``speedup=2`` (= ``target_macs=0.5``); alone, a budget searches one uniform ratio, otherwise it scales the
given ratios until the pruned model's MACs meet it (:func:`solve_budget`).

A ratio is the fraction of a layer's output channels to remove; a layer keeps ``n - int(ratio * n)``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.models.probe import probe
from prunekit.surgery.channels import apply_with_report
from prunekit.surgery.graph import ChannelGraph

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"\d+")
_BUDGET_KEYS = ("target_macs", "speedup")

#: Most a budget search may take from any one layer, so that every layer keeps a few channels.
MAX_BUDGET_RATIO = 0.95
#: Relative distance to the budget that the search accepts (1 %).
BUDGET_TOLERANCE = 0.01


def _syntax_error(spec: str, pos: int, what: str) -> ConfigError:
    return ConfigError(f"bad layer selection: {what}\n  {spec}\n  {' ' * pos}^")


@dataclass(frozen=True)
class Budget:
    """A MAC budget: keep `fraction` of the dense MACs. `kind`/`value` remember how the user wrote it."""

    kind: Literal["target_macs", "speedup"]
    value: float

    @property
    def fraction(self) -> float:
        return self.value if self.kind == "target_macs" else 1.0 / self.value


@dataclass(frozen=True)
class Selection:
    """A parsed selection. Exactly one of `rules`, `sequence`, `uniform` is set, unless only a budget is."""

    spec: str
    rules: tuple[tuple[str, float], ...] = ()
    sequence: tuple[float, ...] | None = None
    uniform: float | None = None
    budget: Budget | None = None

    def ratios(self, layers: Sequence[str]) -> dict[str, float]:
        """Ratio per layer (0.0 where nothing selects it), in the order of `layers`. A budget-only
        selection gives 1.0 everywhere: the shape a budget search scales."""
        if self.sequence is not None:
            if len(self.sequence) != len(layers):
                raise ConfigError(
                    f"the list expression {self.spec!r} has {len(self.sequence)} entries but the model has "
                    f"{len(layers)} prunable layers; it needs exactly {len(layers)} "
                    f"(the first entry maps to {layers[0]!r}, the last to {layers[-1]!r})"
                    if layers
                    else f"the list expression {self.spec!r} has {len(self.sequence)} entries but the model "
                    "has no prunable layers"
                )
            return dict(zip(layers, self.sequence, strict=True))
        if self.rules:
            ratios = dict.fromkeys(layers, 0.0)
            for pattern, ratio in self.rules:
                matched = fnmatch.filter(layers, pattern)
                if not matched:
                    shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
                    raise ConfigError(
                        f"layer pattern {pattern!r} in {self.spec!r} matches no prunable layer; "
                        f"prunable layers are named like: {shown}"
                    )
                ratios.update(dict.fromkeys(matched, ratio))
            return ratios
        uniform = 1.0 if self.uniform is None else self.uniform
        return dict.fromkeys(layers, uniform)

    def selected(self, layers: Sequence[str]) -> set[str]:
        """The layers some part of the expression names (glob rules may leave layers unnamed)."""
        if self.rules:
            return {name for pattern, _ in self.rules for name in fnmatch.filter(layers, pattern)}
        return set(layers)


def parse_selection(spec: str | float) -> Selection:
    """Parse a selection expression; syntax errors show the expression with a caret at the fault."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = repr(float(spec))
    if not isinstance(spec, str):
        raise ConfigError(f"a layer selection must be a string or a number, got {type(spec).__name__}")
    if not spec.strip():
        raise ConfigError("empty layer selection; give e.g. '0.5', '*conv1:0.5' or 'target_macs=0.5'")
    rules: list[tuple[str, float]] = []
    ratio_lists: list[tuple[int, str, list[float]]] = []
    budget: Budget | None = None
    start = 0
    for item in spec.split(","):
        end = start + len(item)
        lead = len(item) - len(item.lstrip())
        text = item.strip()
        at = start + lead
        if not text:
            raise _syntax_error(spec, at, "empty item between commas")
        if ":" in text:
            pattern, _, ratio_text = text.rpartition(":")
            if not pattern.strip():
                raise _syntax_error(spec, at, "missing layer pattern before ':'")
            ratio_at = at + len(pattern) + 1
            rules.append((pattern.strip(), _parse_ratio(spec, ratio_at, end)))
        elif "=" in text:
            if budget is not None:
                raise _syntax_error(spec, at, "more than one budget; give either target_macs= or speedup=")
            budget = _parse_budget(spec, at, end)
        else:
            ratio_lists.append((at, text, _parse_list(spec, at, end)))
        start = end + 1
    if ratio_lists and (rules or len(ratio_lists) > 1):
        at = ratio_lists[-1][0] if len(ratio_lists) > 1 else ratio_lists[0][0]
        raise _syntax_error(
            spec, at, "a ratio list or single ratio cannot be combined with other ratios; use 'pattern:ratio'"
        )
    if not ratio_lists:
        return Selection(spec, rules=tuple(rules), budget=budget)
    _, text, values = ratio_lists[0]
    if len(values) == 1 and not any(c in text for c in "[+*"):
        return Selection(spec, uniform=values[0], budget=budget)
    return Selection(spec, sequence=tuple(values), budget=budget)


def resolve_ratios(spec: str | float | Selection, layers: Sequence[str]) -> dict[str, float]:
    """Ratio per prunable layer (names in execution order). A budget is ignored here: the ratios
    returned are the shape that :func:`solve_budget` scales."""
    selection = spec if isinstance(spec, Selection) else parse_selection(spec)
    return selection.ratios(layers)


def _skip_space(spec: str, pos: int, end: int) -> int:
    while pos < end and spec[pos].isspace():
        pos += 1
    return pos


def _number_at(spec: str, pos: int, end: int, what: str) -> tuple[float, int]:
    match = _NUMBER.match(spec, pos, end)
    if match is None:
        raise _syntax_error(spec, pos, f"expected {what}")
    return float(match.group()), match.end()


def _check_ratio(spec: str, pos: int, ratio: float) -> float:
    if not 0.0 <= ratio < 1.0:
        raise _syntax_error(
            spec, pos, f"ratio {ratio:g} is outside [0, 1): it is the fraction of channels removed"
        )
    return ratio


def _parse_ratio(spec: str, pos: int, end: int) -> float:
    pos = _skip_space(spec, pos, end)
    ratio, after = _number_at(spec, pos, end, "a ratio in [0, 1) after ':'")
    if _skip_space(spec, after, end) != end:
        raise _syntax_error(spec, _skip_space(spec, after, end), "unexpected text after the ratio")
    return _check_ratio(spec, pos, ratio)


def _parse_budget(spec: str, pos: int, end: int) -> Budget:
    key_text, _, _ = spec[pos:end].partition("=")
    key = key_text.strip()
    if key not in _BUDGET_KEYS:
        raise _syntax_error(spec, pos, f"unknown budget {key!r}; valid budgets: {', '.join(_BUDGET_KEYS)}")
    value_at = _skip_space(spec, pos + len(key_text) + 1, end)
    value, after = _number_at(spec, value_at, end, f"a number after '{key}='")
    if _skip_space(spec, after, end) != end:
        raise _syntax_error(spec, _skip_space(spec, after, end), "unexpected text after the budget")
    if key == "target_macs" and not 0.0 < value < 1.0:
        raise _syntax_error(
            spec, value_at, f"target_macs={value:g} must be in (0, 1): the fraction of dense MACs to keep"
        )
    if key == "speedup" and value <= 1.0:
        raise _syntax_error(spec, value_at, f"speedup={value:g} must be > 1")
    return Budget(key, value)  # type: ignore[arg-type]


def _parse_list(spec: str, pos: int, end: int) -> list[float]:
    """``term ('+' term)*`` with ``term := ('[' number ']' | number) ('*' count)?``."""
    values: list[float] = []
    while True:
        pos = _skip_space(spec, pos, end)
        bracket = pos < end and spec[pos] == "["
        if bracket:
            pos = _skip_space(spec, pos + 1, end)
        number_at = pos
        ratio, pos = _number_at(spec, pos, end, "a ratio (a number such as 0.5)")
        _check_ratio(spec, number_at, ratio)
        pos = _skip_space(spec, pos, end)
        if bracket:
            if pos >= end or spec[pos] != "]":
                raise _syntax_error(spec, pos, "expected ']'")
            pos = _skip_space(spec, pos + 1, end)
        count = 1
        if pos < end and spec[pos] == "*":
            pos = _skip_space(spec, pos + 1, end)
            match = _INTEGER.match(spec, pos, end)
            if match is None:
                raise _syntax_error(spec, pos, "expected a whole repeat count after '*'")
            count, pos = int(match.group()), _skip_space(spec, match.end(), end)
        values.extend([ratio] * count)
        if pos >= end:
            return values
        if spec[pos] != "+":
            raise _syntax_error(spec, pos, "expected '+', ',' or the end of the expression")
        pos += 1


@dataclass(frozen=True)
class BudgetResult:
    """Outcome of a budget search: `ratio` is the uniform ratio (or the scale of the given ratios)."""

    ratio: float
    target: float
    reached_fraction: float
    dense_macs: int
    pruned_macs: int
    ratios: dict[str, float]


class BudgetGap(ConfigError):
    """The uniform search stopped between two adjacent width steps; carries both neighbours so a caller that
    knows the coupling groups can refine one group at a time."""

    def __init__(self, message: str, above: dict[str, float], below: dict[str, float]) -> None:
        super().__init__(message)
        self.above, self.below = above, below


def scaled_ratios(
    base: dict[str, float], scale: float, max_ratio: float = MAX_BUDGET_RATIO
) -> dict[str, float]:
    return {name: min(ratio * scale, max_ratio) for name, ratio in base.items()}


def solve_budget(
    budget: Budget,
    base: dict[str, float],
    count_macs: Callable[[dict[str, float]], int],
    *,
    max_ratio: float = MAX_BUDGET_RATIO,
    tolerance: float = BUDGET_TOLERANCE,
) -> BudgetResult:
    """Bisect the scale s of `base` ratios (capped at `max_ratio`) until ``count_macs(ratios)`` is within
    `tolerance` (relative) of ``budget.fraction`` of the dense MACs. MACs never grow with s, so bisection
    converges; width steps are integers, so a budget between two steps is refused with both neighbours."""
    target = budget.fraction
    if not any(ratio > 0 for ratio in base.values()):
        raise ConfigError(f"the budget {budget.kind}={budget.value:g} needs at least one selected layer")
    dense = count_macs(dict.fromkeys(base, 0.0))
    top = max_ratio / max(base.values())

    def fraction_at(scale: float) -> tuple[float, int]:
        macs = count_macs(scaled_ratios(base, scale, max_ratio))
        return macs / dense, macs

    def result(scale: float, macs: int) -> BudgetResult:
        return BudgetResult(scale, target, macs / dense, dense, macs, scaled_ratios(base, scale, max_ratio))

    def within(fraction: float) -> bool:
        return abs(fraction - target) <= tolerance * target

    floor_fraction, floor_macs = fraction_at(top)
    if within(floor_fraction):
        return result(top, floor_macs)
    if floor_fraction > target:
        raise ConfigError(
            f"budget {budget.kind}={budget.value:g} is out of reach: pruning the selected layers at the "
            f"maximum ratio {max_ratio:g} keeps {floor_fraction:.4f} of the dense MACs "
            f"(speedup {1 / floor_fraction:.3f}x); ask for target_macs>={floor_fraction:.4f} "
            f"or select more layers"
        )
    lo, hi = 0.0, top  # fraction(lo) > target >= fraction(hi)
    lo_fraction, hi_fraction = 1.0, floor_fraction
    for _ in range(60):
        mid = (lo + hi) / 2
        fraction, macs = fraction_at(mid)
        if within(fraction):
            return result(mid, macs)
        if fraction > target:
            lo, lo_fraction = mid, fraction
        else:
            hi, hi_fraction = mid, fraction
        if hi - lo < 1e-9:
            break
    raise BudgetGap(
        f"budget {budget.kind}={budget.value:g} falls between two reachable widths: the closest reachable "
        f"MAC fractions are {lo_fraction:.4f} and {hi_fraction:.4f}; ask for one of them "
        f"(tolerance {tolerance:.0%})",
        above=scaled_ratios(base, lo, max_ratio),
        below=scaled_ratios(base, hi, max_ratio),
    )


def pruned_count(ratio: float, n: int, layer: str) -> int:
    """``int(ratio * n)``: the floor of the float product, as HRank does (0.7 * 12 -> 8)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"layer {layer!r}: pruning ratio {ratio:g} is outside [0, 1)")
    count = int(ratio * n)
    if count >= n:
        raise ConfigError(f"layer {layer!r}: ratio {ratio:g} would remove all {n} channels; lower it")
    return count


class MacCounter:
    """MACs of `model` pruned at given per-layer ratios (which channels go does not change the count).

    `analytic` is exact arithmetic over the dependency graph traced once: removing p of a group's n
    channels removes p/n of every output and input channel set the group reaches (a flatten maps one
    channel to H·W inputs, so the fraction still holds). `real` applies the surgery and measures, and is
    what a budget search finally checks against.
    """

    def __init__(self, model: nn.Module, example: Tensor) -> None:
        self.model, self.example = model, example
        graph = ChannelGraph(model, example)
        self.groups: list[tuple[str, ...]] = list(
            dict.fromkeys(layer.group for layer in graph.prunable_layers())
        )
        self.widths = {group: graph.out_channels(group[0]) for group in self.groups}
        self._out_removed = {g: _sizes(graph.full_effect(g[0]).out_removed) for g in self.groups}
        self._in_removed = {g: _sizes(graph.full_effect(g[0]).in_removed) for g in self.groups}
        self._calls = _layer_calls(model, example)
        self.dense = self.analytic({})

    def plan(self, ratios: dict[str, float]) -> dict[str, list[int]]:
        """Keep the first channels of each group: the widths of `ratios` without any criterion."""
        plan: dict[str, list[int]] = {}
        for group in self.groups:
            ratio = ratios.get(group[0], 0.0)
            if ratio > 0:
                width = self.widths[group]
                plan.update(dict.fromkeys(group, list(range(width - pruned_count(ratio, width, group[0])))))
        return plan

    def analytic(self, ratios: dict[str, float]) -> int:
        out_lost: dict[str, float] = {}
        in_lost: dict[str, float] = {}
        for group in self.groups:
            ratio = ratios.get(group[0], 0.0)
            if ratio == 0:
                continue
            fraction = pruned_count(ratio, self.widths[group], group[0]) / self.widths[group]
            for name, size in self._out_removed[group].items():
                out_lost[name] = out_lost.get(name, 0.0) + size * fraction
            for name, size in self._in_removed[group].items():
                in_lost[name] = in_lost.get(name, 0.0) + size * fraction
        total = 0.0
        for name, positions, per_output, out_full, in_full, grouped in self._calls:
            out_kept = out_full - out_lost.get(name, 0.0)
            # A grouped (e.g. depthwise) conv loses inputs together with outputs: per-output work is fixed.
            per_output_kept = (
                per_output if grouped else per_output * (in_full - in_lost.get(name, 0.0)) / in_full
            )
            total += positions * out_kept * per_output_kept
        return round(total)

    def refine(
        self,
        target: float,
        above: dict[str, float],
        below: dict[str, float],
        tolerance: float = BUDGET_TOLERANCE,
    ) -> BudgetResult | None:
        """From `above` (the uniform solution just over the target), remove one channel of one selected group
        at a time, each time the step that removes the most MACs without leaving the tolerance band, until the
        band is reached; `None` if it cannot be. Groups move as a whole, so coupled layers keep one ratio;
        every group stays within the maximum budget ratio."""
        selected = [g for g in self.groups if below.get(g[0], 0.0) > 0]
        pruned = {g: pruned_count(above.get(g[0], 0.0), self.widths[g], g[0]) for g in self.groups}
        cap = {g: min(int(MAX_BUDGET_RATIO * self.widths[g]), self.widths[g] - 1) for g in selected}
        low, high = self.dense * target * (1 - tolerance), self.dense * target * (1 + tolerance)

        def ratios_of(counts: dict[tuple[str, ...], int]) -> dict[str, float]:
            # (k + 0.5) / n floors back to exactly k channels under `pruned_count`.
            out = dict(above)
            for g, k in counts.items():
                out.update(dict.fromkeys(g, (k + 0.5) / self.widths[g] if k else 0.0))
            return out

        macs = self.analytic(ratios_of(pruned))
        while macs > high:
            steps = [
                (self.analytic(ratios_of({**pruned, g: pruned[g] + 1})), g)
                for g in selected
                if pruned[g] < cap[g]
            ]
            fitting = [step for step in steps if step[0] >= low]
            if not fitting:
                return None
            macs, group = min(fitting, key=lambda step: step[0])
            pruned[group] += 1
        removed = sum(pruned[g] * len(g) for g in selected)
        channels = sum(self.widths[g] * len(g) for g in selected)
        # `ratio` reports the overall fraction of selected channels removed (no single scale applies).
        return BudgetResult(
            removed / channels, target, macs / self.dense, self.dense, macs, ratios_of(pruned)
        )

    def real(self, ratios: dict[str, float]) -> int:
        return apply_with_report(self.model, self.plan(ratios), self.example)[1].macs_after


def _sizes(removed: dict[str, set[int]]) -> dict[str, int]:
    return {name: len(indices) for name, indices in removed.items()}


def _layer_calls(model: nn.Module, example: Tensor) -> list[tuple[str, int, int, int, int, bool]]:
    """Per conv/linear call: (name, output positions, MACs per output value, out width, in width, grouped)."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[str, int, int, int, int, bool]] = []

    def record(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            out_full, in_full, grouped = module.out_channels, module.in_channels, module.groups > 1
        else:
            out_full, in_full, grouped = module.out_features, module.in_features, False
        positions = output.numel() // output.shape[0] // out_full
        per_output = module.weight[0].numel()
        calls.append((names[module], positions, per_output, out_full, in_full, grouped))

    probe(
        model,
        example,
        [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
    )
    return calls


def meet_budget(model: nn.Module, example: Tensor, budget: Budget, base: dict[str, float]) -> BudgetResult:
    """Scale `base` ratios to meet `budget`, searching on the analytic count and confirming on the really
    pruned model; should the two ever disagree, the search is redone on real surgery."""
    counter = MacCounter(model, example)
    try:
        result = solve_budget(budget, base, counter.analytic)
    except BudgetGap as gap:
        refined = counter.refine(budget.fraction, gap.above, gap.below)
        if refined is None:
            raise
        result = refined
    real = counter.real(result.ratios)
    if real == result.pruned_macs:
        return result
    cache: dict[tuple[tuple[str, ...], ...], int] = {}

    def measured(ratios: dict[str, float]) -> int:
        key = tuple(tuple(map(str, kept)) for kept in counter.plan(ratios).values())
        if key not in cache:
            cache[key] = counter.real(ratios)
        return cache[key]

    return solve_budget(budget, base, measured)
