"""Budgets: the one search that turns ``target_macs`` / ``speedup`` / ``target_density`` into a method's
knob, confirmed on the really pruned model and reported as reached.

Two searches, one entry point (`meet`):

- methods that allocate per-layer ratios (every scoring criterion: L1, FPGM, random, HRank, ...) scale
  those ratios. `MacCounter` counts the MACs of any ratios exactly from the dependency graph traced once,
  so the bisection costs no surgery; a target between two width steps is refined one coupled group at a
  time (`MacCounter.refine`).
- every other method declares a scalar `knob` (a global threshold, a sensitivity, an energy) whose growth
  never adds cost; `search_knob` bisects it on the really pruned model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods.selection import Budget, pruned_count
from prunekit.models.probe import probe
from prunekit.surgery.channels import apply_with_report
from prunekit.surgery.graph import ChannelGraph

if TYPE_CHECKING:
    from prunekit.methods.base import Calib, Method, Pruned
    from prunekit.methods.stage import Stage

#: Most a budget search may take from any one layer, so that every layer keeps a few channels.
MAX_BUDGET_RATIO = 0.95
#: Relative distance to the budget that the ratio search accepts (1 %).
BUDGET_TOLERANCE = 0.01
#: Relative distance a knob search accepts when the knob's steps cannot land within BUDGET_TOLERANCE.
KNOB_TOLERANCE = 0.02


@dataclass(frozen=True)
class BudgetResult:
    """Outcome of a budget search: `ratio` is the uniform ratio (or the scale of the given ratios)."""

    ratio: float
    target: float
    reached_fraction: float
    dense_macs: int
    pruned_macs: int
    ratios: dict[str, float]
    knob: str = "ratio_scale"  # what was searched; `ratio` holds its value
    counts: str = "macs"  # "macs", or "density": dense_macs/pruned_macs then count weights and nonzeros


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


# ---------------------------------------------------------------- the entry point and the knob search


def meet(method: Method, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
    """`method.prune`, with its selection's budget met: ratio-allocating methods meet it inside their
    allocation (`meet_budget`), the others by `search_knob`. The reached cost is measured on the returned
    model and recorded in ``Pruned.budget``."""
    from prunekit.methods.base import example_input

    budget = method.selection.budget if method.selection is not None else None
    if budget is None:
        return method.prune(model, calib, stage)
    kind = method.budget_kind()
    if kind is None:
        raise ConfigError(f"method {method.name!r} has no budget knob; drop {budget.kind}=")
    if budget.counts != kind:
        wanted = "target_density=" if kind == "density" else "target_macs= or speedup="
        prunes = "element-wise (masks)" if kind == "density" else "whole channels"
        raise ConfigError(
            f"method {method.name!r} as configured prunes {prunes}, so its budget is {wanted}, "
            f"not {budget.kind}="
        )
    example = example_input(calib, method.name)
    if method.knob == "ratio_scale":
        pruned = method.prune(model, calib, stage)
    else:
        pruned = search_knob(method, model, calib, budget, stage)
    found = pruned.budget
    dense = found.dense_macs if found is not None else cost_of(model, example, kind)
    reached = cost_of(pruned.model, example, kind)
    pruned.budget = BudgetResult(
        found.ratio if found else math.nan,
        budget.fraction,
        reached / dense,
        dense,
        reached,
        found.ratios if found else {},
        knob=found.knob if found else str(method.knob),
        counts=kind,
    )
    tolerance = BUDGET_TOLERANCE if method.knob == "ratio_scale" else KNOB_TOLERANCE
    if abs(reached / dense - budget.fraction) > tolerance * budget.fraction + 1e-12:
        raise PrunekitError(
            f"method {method.name!r}: the pruned model keeps {reached / dense:.4f} of the dense {kind}, "
            f"not the {budget.fraction:.4f} the budget asks for"
        )
    return pruned


def cost_of(model: nn.Module, example: Tensor, kind: str) -> int:
    """What a budget counts: conv+linear MACs per image, or nonzero conv/linear weights."""
    if kind == "density":
        return sum(
            int((m.weight != 0).sum())
            for m in model.modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        )
    from prunekit.measure.cost import cost

    return cost(model, tuple(example.shape)).macs


def search_knob(
    method: Method, model: nn.Module, calib: Calib | None, budget: Budget, stage: Stage | None = None
) -> Pruned:
    """Bisect ``method.knob`` within ``method.knob_range`` until the really pruned model's cost is within
    BUDGET_TOLERANCE of the budget (cost never grows with the knob). Knob values whose pruning fails (it
    would empty a layer) count as "too far". If the knob's steps jump over the band, the closest trial
    within KNOB_TOLERANCE is taken; otherwise the two closest reachable fractions are named."""
    from prunekit.methods.base import example_input

    example = example_input(calib, method.name)
    kind = method.budget_kind() or "macs"
    dense = cost_of(model, example, kind)
    target = budget.fraction
    trials: list[tuple[float, float, Pruned]] = []  # (knob, fraction, result)

    def trial(value: float) -> float | None:
        try:
            pruned = method.with_knob(value).prune(model, calib, stage)
        except PrunekitError:
            return None
        fraction = cost_of(pruned.model, example, kind) / dense
        trials.append((value, fraction, pruned))
        return fraction

    lo, hi = method.knob_range
    lo_fraction = trial(lo)
    if lo_fraction is not None and lo_fraction < target * (1 - BUDGET_TOLERANCE):
        raise ConfigError(
            f"budget {budget.kind}={budget.value:g} is out of reach for {method.name!r}: its smallest "
            f"{method.knob} ({lo:g}) already keeps only {lo_fraction:.4f}"
        )
    for _ in range(40):
        if trials and abs(trials[-1][1] - target) <= BUDGET_TOLERANCE * target:
            break
        mid = (lo + hi) / 2
        fraction = trial(mid)
        if fraction is None or fraction < target:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-6 * max(1.0, abs(hi)):
            break
    if not trials:
        raise ConfigError(
            f"method {method.name!r} could not prune at any {method.knob} in {method.knob_range}"
        )
    value, fraction, pruned = min(trials, key=lambda t: abs(t[1] - target))
    if abs(fraction - target) > KNOB_TOLERANCE * target:
        above = min((t[1] for t in trials if t[1] > target), default=None)
        below = max((t[1] for t in trials if t[1] < target), default=None)
        raise ConfigError(
            f"budget {budget.kind}={budget.value:g}: {method.name}'s {method.knob} cannot land within "
            f"{KNOB_TOLERANCE:.0%}; the closest reachable fractions are "
            f"{'none above' if above is None else f'{above:.4f}'} and "
            f"{'none below' if below is None else f'{below:.4f}'}"
        )
    pruned.budget = BudgetResult(
        value, target, fraction, dense, round(fraction * dense), {}, knob=str(method.knob)
    )
    return pruned
