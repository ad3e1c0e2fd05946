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

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods.selection import Budget, align_ratios, pruned_count
from prunekit.models.probe import probe
from prunekit.surgery.channels import apply_with_report
from prunekit.surgery.graph import graph_of

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
    #: Latency budgets: the candidates timed against the dense model while the search corrected the lookup
    #: table (per step: the table's target, its prediction, the measured fraction and its range).
    measured: tuple[dict[str, float], ...] = ()


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
        graph = graph_of(model, example)  # the run's one trace, shared with the method and the surgery
        self._groups = {group.members: group for group in graph.groups()}
        self.groups: list[tuple[str, ...]] = list(self._groups)
        self.widths = {members: group.units for members, group in self._groups.items()}
        # For each group and each layer side its units reach: channels lost when the group's last k units
        # go (`plan` keeps the first units), for every k: exact even where units differ in size.
        self._lost: dict[tuple[str, ...], dict[tuple[str, str], list[int]]] = {}
        for members, group in self._groups.items():
            lost = {}
            for (name, side), counts in graph.unit_counts(group).items():
                if name in graph.modules:
                    lost[(name, side)] = [0, *counts.flip(0).cumsum(0).tolist()]
            self._lost[members] = lost
        whole = {
            name
            for name, m in graph.modules.items()
            if isinstance(m, nn.Conv2d)
            and m.groups > 1
            and (name in graph.whole_group_convs or m.groups == m.out_channels)
        }
        self._calls = _layer_calls(model, example, whole)
        self.dense = self.analytic({})

    def plan(self, ratios: dict[str, float]) -> dict[str, list[int]]:
        """Keep the first units of each group: the widths of `ratios` without any criterion."""
        from prunekit.methods.base import LayerGroup  # base imports this module

        plan: dict[str, list[int]] = {}
        for members, group in self._groups.items():
            ratio = ratios.get(members[0], 0.0)
            if ratio > 0:
                units = group.units
                kept = range(units - pruned_count(ratio, units, members[0]))
                # through the methods' own rule, so a branch that would lose every unit keeps one here too
                plan.update(LayerGroup(members, units, group.unit_of).kept_channels(kept))
        return plan

    def lost(self, ratios: dict[str, float]) -> tuple[dict[str, int], dict[str, int]]:
        """Output and input channels each conv/linear layer loses at `ratios` (only those that lose any)."""
        out_lost: dict[str, int] = {}
        in_lost: dict[str, int] = {}
        for group in self.groups:
            ratio = ratios.get(group[0], 0.0)
            if ratio == 0:
                continue
            k = pruned_count(ratio, self.widths[group], group[0])
            for (name, side), lost in self._lost[group].items():
                if side != "in":
                    out_lost[name] = out_lost.get(name, 0) + lost[k]
                if side != "out":
                    in_lost[name] = in_lost.get(name, 0) + lost[k]
        return out_lost, in_lost

    def analytic(self, ratios: dict[str, float]) -> int:
        out_lost, in_lost = self.lost(ratios)
        total = 0.0
        for name, positions, per_output, out_full, in_full, grouped in self._calls:
            out_kept = out_full - out_lost.get(name, 0)
            # A conv that loses whole groups (e.g. depthwise) loses inputs with outputs: per-output work is
            # fixed; any other conv (also one losing the same positions in every group) scales with inputs.
            per_output_kept = (
                per_output if grouped else per_output * (in_full - in_lost.get(name, 0)) / in_full
            )
            total += positions * out_kept * per_output_kept
        return round(total)

    def refine(
        self,
        target: float,
        above: dict[str, float],
        below: dict[str, float],
        tolerance: float = BUDGET_TOLERANCE,
        round_to: int | None = None,
        seen: list[float] | None = None,
    ) -> BudgetResult | None:
        """From `above` (the uniform solution just over the target), remove one channel of one selected group
        at a time, each time the step that removes the most MACs without leaving the tolerance band, until the
        band is reached; `None` if it cannot be. Groups move as a whole, so coupled layers keep one ratio;
        every group stays within the maximum budget ratio. With `round_to` (`above` already aligned) a step
        moves a group to its next multiple of `round_to` below, never under `round_to`. Every fraction
        evaluated is appended to `seen` (the closest reachable ones name a miss)."""
        selected = [g for g in self.groups if below.get(g[0], 0.0) > 0]
        pruned = {g: pruned_count(above.get(g[0], 0.0), self.widths[g], g[0]) for g in self.groups}
        cap = {g: min(int(MAX_BUDGET_RATIO * self.widths[g]), self.widths[g] - 1) for g in selected}
        if round_to is not None:
            # The narrowest aligned width may sit beyond the ratio cap; alignment's own floor governs.
            cap = {g: self.widths[g] - round_to for g in selected}
        step = round_to or 1

        def next_count(g: tuple[str, ...]) -> int:
            kept = self.widths[g] - pruned[g]
            return self.widths[g] - (kept - 1) // step * step

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
                (self.analytic(ratios_of({**pruned, g: next_count(g)})), g)
                for g in selected
                if next_count(g) <= cap[g]
            ]
            if seen is not None:
                seen.extend(m / self.dense for m, _ in steps)
            fitting = [s for s in steps if s[0] >= low]
            if not fitting:
                return None
            macs, group = min(fitting, key=lambda s: s[0])
            pruned[group] = next_count(group)
        removed = sum(pruned[g] * len(g) for g in selected)
        channels = sum(self.widths[g] * len(g) for g in selected)
        # `ratio` reports the overall fraction of selected channels removed (no single scale applies).
        return BudgetResult(
            removed / channels, target, macs / self.dense, self.dense, macs, ratios_of(pruned)
        )

    def real(self, ratios: dict[str, float]) -> int:
        # only the count matters here: the method's own apply proves its model equals masking
        pruned = apply_with_report(self.model, self.plan(ratios), self.example, check_masking=False)
        return pruned[1].macs_after


def _layer_calls(
    model: nn.Module, example: Tensor, whole_groups: set[str]
) -> list[tuple[str, int, int, int, int, bool]]:
    """Per conv/linear call: (name, output positions, MACs per output value, out width, in width, whether it
    loses whole groups)."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[str, int, int, int, int, bool]] = []

    def record(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            out_full, in_full = module.out_channels, module.in_channels
            grouped = names[module] in whole_groups
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


def meet_budget(
    model: nn.Module,
    example: Tensor,
    budget: Budget,
    base: dict[str, float],
    round_to: int | None = None,
    fastest: bool = False,
    depth: bool = False,
) -> BudgetResult:
    """Scale `base` ratios to meet `budget`, searching on the analytic count and confirming on the really
    pruned model; should the two ever disagree, the search is redone on real surgery. With `round_to` the
    search runs over aligned widths only (`align_ratios`) and accepts KNOB_TOLERANCE: aligned steps are
    coarse. `fastest` (``round_to=auto``): among the aligned widths near that answer that also meet the
    budget, the ones the latency table predicts fastest at the budget's batch size and threads
    (`latency_budget.fastest_aligned`); with `depth`, residual branches may also go whole."""
    if not any(ratio > 0 for ratio in base.values()):
        from prunekit.methods.base import no_prunable_layer, prunable_groups  # base imports this module

        if not prunable_groups(model, example):
            raise no_prunable_layer(
                model, example, f"the budget {budget.kind}={budget.value:g} cannot be met"
            )
    counter = MacCounter(model, example)
    widths = [(g, counter.widths[g]) for g in counter.groups]

    def align(ratios: dict[str, float]) -> dict[str, float]:
        return align_ratios(widths, ratios, round_to)

    tolerance = BUDGET_TOLERANCE if round_to is None else KNOB_TOLERANCE
    try:
        result = solve_budget(budget, base, lambda r: counter.analytic(align(r)), tolerance=tolerance)
        result = dataclasses.replace(result, ratios=align(result.ratios))
    except BudgetGap as gap:
        seen: list[float] = [counter.analytic(align(gap.above)) / counter.dense]
        refined = counter.refine(
            budget.fraction, align(gap.above), align(gap.below), tolerance, round_to=round_to, seen=seen
        )
        if refined is None and round_to is None:
            raise
        if refined is None:
            above = min((f for f in seen if f > budget.fraction), default=None)
            floor = counter.analytic(align(gap.below)) / counter.dense
            below = max([f for f in seen if f < budget.fraction] + [floor])
            raise ConfigError(
                f"budget {budget.kind}={budget.value:g} has no plan with widths that are multiples of "
                f"round_to={round_to} within {tolerance:.0%}; the closest reachable MAC fractions are "
                f"{'none above' if above is None else f'{above:.4f}'} and {below:.4f}; ask for one of "
                "them or a smaller round_to"
            ) from None
        result = refined
    real = counter.real(result.ratios)
    if real == result.pruned_macs:
        if fastest and round_to is not None:
            from prunekit.methods.latency_budget import fastest_aligned

            faster = fastest_aligned(
                model, example, counter, budget, result, round_to, tolerance, depth=depth
            )
            if counter.real(faster.ratios) == faster.pruned_macs:
                return faster
        return result
    cache: dict[tuple[tuple[str, ...], ...], int] = {}

    def measured(ratios: dict[str, float]) -> int:
        key = tuple(tuple(map(str, kept)) for kept in counter.plan(ratios).values())
        if key not in cache:
            cache[key] = counter.real(ratios)
        return cache[key]

    result = solve_budget(budget, base, lambda r: measured(align(r)), tolerance=tolerance)
    return dataclasses.replace(result, ratios=align(result.ratios))


# ---------------------------------------------------------------- the entry point and the knob search


def meet(method: Method, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
    """`method.prune`, with its selection's budget met: ratio-allocating methods meet it inside their
    allocation (`meet_budget`), the others by `search_knob`. The reached cost is measured on the returned
    model and recorded in ``Pruned.budget``."""
    from prunekit.methods.alignment import align_pruned
    from prunekit.methods.base import example_input

    budget = method.selection.budget if method.selection is not None else None
    round_to = method.selection.round_to if method.selection is not None else None
    if budget is None:
        pruned = method.prune(model, calib, stage)
        # Ratio-allocating methods align inside their allocation; the others are aligned here.
        if round_to is not None and method.knob != "ratio_scale":
            pruned = align_pruned(model, pruned, example_input(calib, method.name), round_to, method.name)
        return pruned
    kind = method.budget_kind()
    if kind is None:
        raise ConfigError(f"method {method.name!r} has no budget knob; drop {budget.kind}=")
    if budget.counts == "latency" and kind == "macs":
        kind = "latency"  # a method that removes structure can also be budgeted by predicted latency
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
    elif kind == "latency":
        from prunekit.methods.latency_budget import measured_knob_search

        pruned = measured_knob_search(method, model, calib, budget, stage, round_to=round_to)
    else:
        pruned = search_knob(method, model, calib, budget, stage, round_to=round_to)
    found = pruned.budget
    if kind == "latency":
        from prunekit.methods.latency_budget import confirm_latency

        return confirm_latency(method, model, pruned, example, budget)
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
    tolerance = BUDGET_TOLERANCE if method.knob == "ratio_scale" and round_to is None else KNOB_TOLERANCE
    if abs(reached / dense - budget.fraction) > tolerance * budget.fraction + 1e-12:
        raise PrunekitError(
            f"method {method.name!r}: the pruned model keeps {reached / dense:.4f} of the dense {kind}, "
            f"not the {budget.fraction:.4f} the budget asks for"
        )
    return pruned


def cost_of(model: nn.Module, example: Tensor, kind: str, budget: Budget | None = None) -> float:
    """What a budget counts: conv+linear MACs per image, nonzero conv/linear weights, or the latency the
    lookup table predicts for `budget`'s batch size and threads."""
    if kind == "latency":
        from prunekit.methods.latency_budget import predicted_latency

        return predicted_latency(model, example, budget)
    if kind == "density":
        return sum(
            int((m.weight != 0).sum())
            for m in model.modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        )
    from prunekit.measure.cost import cost

    return cost(model, tuple(example.shape)).macs


def search_knob(
    method: Method,
    model: nn.Module,
    calib: Calib | None,
    budget: Budget,
    stage: Stage | None = None,
    round_to: int | None = None,
) -> Pruned:
    """Bisect ``method.knob`` within ``method.knob_range`` until the really pruned model's cost is within
    BUDGET_TOLERANCE of the budget (cost never grows with the knob). Knob values whose pruning fails (it
    would empty a layer) count as "too far". If the knob's steps jump over the band, the closest trial
    within KNOB_TOLERANCE is taken; otherwise the two closest reachable fractions are named."""
    from prunekit.methods.base import example_input

    example = example_input(calib, method.name)
    from prunekit.methods.alignment import align_pruned

    kind = method.budget_kind() or "macs"
    if budget.counts == "latency":
        kind = "latency"
    dense = cost_of(model, example, kind, budget)
    target = budget.fraction
    trials: list[tuple[float, float, Pruned]] = []  # (knob, fraction, result)
    refusals: list[PrunekitError] = []

    def trial(value: float) -> float | None:
        try:
            pruned = method.with_knob(value).prune(model, calib, stage)
            if round_to is not None:
                pruned = align_pruned(model, pruned, example, round_to, method.name)
        except PrunekitError as exc:
            refusals.append(exc)
            return None
        fraction = cost_of(pruned.model, example, kind, budget) / dense
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
        why = f": {refusals[-1]}" if refusals else ""  # the method's own reason, the same at every value
        raise ConfigError(
            f"method {method.name!r} could not prune at any {method.knob} in {method.knob_range}{why}"
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
