"""Latency budgets: ``target_latency=F`` (fraction of the dense model's deployed latency) and
``speedup_latency=S``, at the budget's batch size and thread count.

Built as NetAdapt and HALP do. A per-layer lookup table (`measure.latency_table`) times every conv/linear
shape the search visits, once per machine; a model's predicted latency is the sum over its layers. The
search moves the same knob as a MAC budget: scoring methods scale their per-layer ratios (bisection, then
one coupled group at a time to the next width, largest predicted drop first), every other method bisects its
own knob with the prediction as the cost. The pruned model is then timed for real against the dense one,
interleaved, and both fractions (predicted and measured, with the measurement's spread) are recorded: the
prediction is what the search met, the measurement is what the user gets.

The table is a sum of layers timed alone; a whole model runs faster or slower than that sum (caches shared
between layers, per-op overhead, fused kernels), by a factor that depends on the widths: on one CPU thread
at batch 1, ResNet-56 candidates the table put at 0.50 of the dense latency measured 0.45-0.46 (at batch
64, with the steady allocator of `measure.allocator`, 0.51-0.53). So scoring methods close the loop: the
table's candidate is built (its widths, any channels) and timed against the dense model, interleaved,
through an injectable `ModelTimer`; while the measurement
is off by more than MEASURED_TOLERANCE, the table's error on that candidate is taken as a ratio that holds
near it (measured / predicted) and the table is searched again for ``target × predicted / measured``. The
candidate measured closest to the target is kept, and every step is recorded.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.measure.latency_table import LatencyTable, LayerShape, layer_shape
from prunekit.methods.budget import KNOB_TOLERANCE, MAX_BUDGET_RATIO, BudgetGap, BudgetResult, solve_budget
from prunekit.methods.selection import EMPTY, Budget, align_ratios, pruned_count
from prunekit.models.probe import probe

if TYPE_CHECKING:
    from prunekit.methods.base import Calib, Method, Pruned
    from prunekit.methods.budget import MacCounter
    from prunekit.methods.stage import Stage

#: Relative distance between the predicted latency and the target that the search accepts.
LATENCY_TOLERANCE = KNOB_TOLERANCE
#: A measured fraction this far (relative) from the predicted one earns a warning: the table misled.
MEASURE_WARNING = 0.10
#: A candidate measured this close (relative) to the target ends the correction: half the ±10 % a latency
#: budget promises, so that the final, independent measurement still lands inside it.
MEASURED_TOLERANCE = 0.05
#: Candidates timed at most per search (each costs one interleaved dense + candidate measurement).
MEASURED_STEPS = 4
#: The table's target moves at most this factor from the budget's: on a quiet machine the table was off by
#: 1.25× at most, so a larger correction comes from a measurement spoiled by load (one under load asked for
#: 0.95 when the budget was 0.5).
MAX_CORRECTION = 1.5

#: Tables by (batch, threads, device), so one run measures each shape once. Tests clear it.
_TABLES: dict[tuple[int, int, str], LatencyTable] = {}


@dataclass(frozen=True)
class Measured:
    """A candidate timed against the dense model, interleaved: its latency as a fraction of the dense
    latency, the smallest and largest such fraction within one round, and both medians."""

    fraction: float
    low: float
    high: float
    dense_ms: float
    pruned_ms: float


#: A model timer: (dense, candidate, per-image input shape, batch size, threads) -> the candidate measured.
ModelTimer = Callable[[nn.Module, nn.Module, tuple[int, ...], int, int], Measured]


def time_fraction(
    dense: nn.Module, candidate: nn.Module, input_shape: tuple[int, ...], batch_size: int, threads: int
) -> Measured:
    """The deployed forms of both models, timed interleaved round by round (`compare_latency`). Each round
    gives the ratio of the two models' fastest samples in it; the fraction is the median of those ratios,
    the range their extremes. Fastest samples, not medians: on a shared machine load only adds time, and
    more to the longer forward (a preemption is likelier inside it), so medians under load called a pruned
    ResNet-56 0.22 of the dense latency where its uncontended runs give 0.37, and the minima stayed at
    0.37; the median over rounds keeps one lucky sample from deciding. Tests replace this (a fake timer)."""
    import statistics

    from prunekit.measure.timing import compare_latency

    small = batch_size < 16  # cheap forwards: more samples for the same few seconds
    rounds = 10 if small else 5
    timed = compare_latency(
        {"dense": dense, "pruned": candidate},
        input_shape,
        batch_size=batch_size,
        threads=threads,
        warmup=3,
        repeats=300 if small else 30,
        rounds=rounds,
    )
    d, p = timed["dense"], timed["pruned"]
    n = len(d.samples) // rounds
    per_round = [
        min(p.samples[k * n : (k + 1) * n]) / min(d.samples[k * n : (k + 1) * n]) for k in range(rounds)
    ]
    return Measured(statistics.median(per_round), min(per_round), max(per_round), d.median_ms, p.median_ms)


def table_for(budget: Budget | None, device: str = "cpu") -> LatencyTable:
    batch, threads = (budget.batch_size, budget.threads) if budget is not None else (1, 1)
    key = (batch, threads, device)
    if key not in _TABLES:
        _TABLES[key] = LatencyTable(batch, threads, device)
    return _TABLES[key]


def layer_shapes(model: nn.Module, example: Tensor) -> dict[str, LayerShape]:
    """The table key of every conv/linear call of `model` on `example` (input spatial size included)."""
    names = {module: name for name, module in model.named_modules()}
    shapes: dict[str, LayerShape] = {}

    def record(module: nn.Module, inputs: Any, _output: Tensor) -> None:
        x = inputs[0]
        in_hw = tuple(x.shape[-2:]) if isinstance(module, nn.Conv2d) else (1, 1)
        shapes[names[module]] = layer_shape(module, in_hw)  # type: ignore[arg-type]

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    probe(model, example, [m.register_forward_hook(record) for m in layers])
    return shapes


def predicted_latency(model: nn.Module, example: Tensor, budget: Budget | None) -> float:
    """µs per batch the lookup table predicts for `model` (sum over its conv/linear layers)."""
    return sum(table_for(budget).lookup_many(layer_shapes(model, example).values()))


class WidthModel:
    """Per-layer shapes of `model` pruned at given per-layer ratios, without surgery per query.

    Which layers a coupled group's channels reach is read from real surgery, once per group: removing one
    channel of group g takes ``d_out[g][L]`` output and ``d_in[g][L]`` input channels from layer L (a
    flatten makes d_in the spatial size). Removal is linear in the count, so k channels take k times that;
    this is the arithmetic of `budget.MacCounter`, kept in whole channels because the table keys on them,
    and built on the public surgery only, so it follows whatever the dependency graph learns."""

    def __init__(self, model: nn.Module, example: Tensor) -> None:
        from prunekit.methods.base import prunable_groups
        from prunekit.surgery import apply

        self.base = layer_shapes(model, example)
        self.groups: list[tuple[str, ...]] = []
        self.widths: dict[tuple[str, ...], int] = {}
        self._d_out: dict[tuple[str, ...], dict[str, int]] = {}
        self._d_in: dict[tuple[str, ...], dict[str, int]] = {}
        for group in prunable_groups(model, example):
            members, n = tuple(group.members), group.out_channels
            self.groups.append(members)
            self.widths[members] = n
            if n < 2:
                continue
            one_less = layer_shapes(apply(model, dict.fromkeys(members, list(range(1, n))), example), example)
            self._d_out[members] = {
                name: self.base[name].out_channels - shape.out_channels
                for name, shape in one_less.items()
                if shape.out_channels != self.base[name].out_channels
            }
            self._d_in[members] = {
                name: self.base[name].in_channels - shape.in_channels
                for name, shape in one_less.items()
                if shape.in_channels != self.base[name].in_channels
            }

    def shapes(self, ratios: dict[str, float]) -> dict[str, LayerShape]:
        out_lost: dict[str, int] = {}
        in_lost: dict[str, int] = {}
        for g in self.groups:
            ratio = ratios.get(g[0], 0.0)
            if ratio == 0 or g not in self._d_out:
                continue
            k = pruned_count(ratio, self.widths[g], g[0])
            for name, d in self._d_out[g].items():
                out_lost[name] = out_lost.get(name, 0) + k * d
            for name, d in self._d_in[g].items():
                in_lost[name] = in_lost.get(name, 0) + k * d
        return {
            name: shape.with_widths(
                shape.in_channels - in_lost.get(name, 0), shape.out_channels - out_lost.get(name, 0)
            )
            for name, shape in self.base.items()
        }


def meet_latency_budget(
    model: nn.Module,
    example: Tensor,
    budget: Budget,
    base: dict[str, float],
    round_to: int | None = None,
    table: LatencyTable | None = None,
    timer: ModelTimer | None = None,
) -> BudgetResult:
    """Per-layer ratios (the shape `base`, scaled; with `round_to` over aligned widths only) whose measured
    latency lands near ``budget.fraction`` of the dense latency: the table's search (`predicted_search`)
    proposes, `timer` (default `time_fraction`) measures the candidate against the dense model, and the
    table's target is corrected by its measured error until the measurement is within MEASURED_TOLERANCE
    (at most MEASURED_STEPS candidates; the one measured closest wins). The result's ``dense_macs`` /
    ``pruned_macs`` hold predicted µs (``counts="latency"``), ``reached_fraction`` the prediction and
    ``measured`` every step."""
    from prunekit.methods.budget import MacCounter
    from prunekit.surgery.channels import apply_with_report

    table = table or table_for(budget)
    widths_model = WidthModel(model, example)
    counter = MacCounter(model, example)  # its `plan` keeps the first channels: the widths, any channels

    def propose(aimed: Budget) -> tuple[Hashable, nn.Module, float, BudgetResult]:
        found = predicted_search(widths_model, table, aimed, base, round_to)
        plan = counter.plan(found.ratios)
        # Only the shapes matter for the time, so the first channels stand in for the criterion's choice.
        candidate = apply_with_report(model, plan, example, check_masking=False)[0]
        key = tuple(sorted((name, len(kept)) for name, kept in plan.items()))
        return key, candidate, found.reached_fraction, found

    found, steps = land_on_measurement(model, example, budget, propose, timer)
    return dataclasses.replace(found, target=budget.fraction, measured=steps)


Payload = TypeVar("Payload")


def land_on_measurement(
    dense: nn.Module,
    example: Tensor,
    budget: Budget,
    propose: Callable[[Budget], tuple[Hashable, nn.Module, float, Payload]],
    timer: ModelTimer | None = None,
) -> tuple[Payload, tuple[dict[str, float], ...]]:
    """Correct a predicted-latency search by measurement. ``propose(b)`` searches the table for ``b`` and
    returns (a key of the candidate's widths, the candidate model, its predicted fraction, what to return);
    each candidate is timed against `dense` by `timer` (default `time_fraction`); while it is more than
    MEASURED_TOLERANCE from the target the table is searched again for `corrected_aim`. The candidate
    measured closest wins; returned with every step. The first search's errors (a budget out of reach)
    propagate; a corrected target the table cannot reach, or one that leads back to widths already timed,
    ends the loop."""
    timer = timer or time_fraction
    target, shape = budget.fraction, tuple(example.shape[1:])
    steps: list[dict[str, float]] = []
    best: tuple[float, Payload] | None = None
    aim, tried = target, set()
    for _ in range(MEASURED_STEPS):
        try:
            key, candidate, predicted, payload = propose(
                budget if not steps else dataclasses.replace(budget, kind="target_latency", value=aim)
            )
        except ConfigError:
            if best is None:
                raise
            break  # the corrected target is beyond what the table's search reaches: keep the best so far
        if key in tried:
            break
        tried.add(key)
        got = timer(dense, candidate, shape, budget.batch_size, budget.threads)
        steps.append(
            {
                "table_target": aim,
                "predicted": predicted,
                "measured": got.fraction,
                "measured_low": got.low,
                "measured_high": got.high,
            }
        )
        if best is None or abs(got.fraction - target) < best[0]:
            best = (abs(got.fraction - target), payload)
        if abs(got.fraction - target) <= MEASURED_TOLERANCE * target:
            break
        aim = corrected_aim(target, [(st["predicted"], st["measured"]) for st in steps])
        aim = min(max(aim, target / MAX_CORRECTION), target * MAX_CORRECTION)
        if not 0 < aim < 1:
            break
    if best is None:  # MEASURED_STEPS < 1: nothing measured
        raise ConfigError("latency budget: no candidate was measured")
    return best[1], tuple(steps)


def measured_knob_search(
    method: Method,
    model: nn.Module,
    calib: Calib | None,
    budget: Budget,
    stage: Stage | None = None,
    round_to: int | None = None,
) -> Pruned:
    """A latency budget for a method with its own knob: `search_knob` on the table's prediction, corrected
    by measuring each candidate (`land_on_measurement`), as the ratio search is."""
    from prunekit.methods.base import example_input
    from prunekit.methods.budget import search_knob

    example = example_input(calib, method.name)

    def propose(aimed: Budget) -> tuple[Hashable, nn.Module, float, Pruned]:
        pruned = search_knob(method, model, calib, aimed, stage, round_to=round_to)
        assert pruned.budget is not None  # search_knob always records its search
        key = tuple(shape.key() for shape in layer_shapes(pruned.model, example).values())
        return key, pruned.model, pruned.budget.reached_fraction, pruned

    pruned, steps = land_on_measurement(model, example, budget, propose)
    if pruned.budget is not None:
        pruned.budget = dataclasses.replace(
            pruned.budget, target=budget.fraction, counts="latency", measured=steps
        )
    return pruned


def corrected_aim(target: float, points: list[tuple[float, float]]) -> float:
    """The predicted fraction to search for next, from the (predicted, measured) fractions of the candidates
    timed so far: between the nearest candidates measured on either side of `target`, the linear
    interpolation; otherwise the nearest one's error as a ratio that holds near it (measured / predicted)."""
    above = [p for p in points if p[1] > target]
    below = [p for p in points if p[1] <= target]
    if above and below:
        (p0, m0), (p1, m1) = min(above, key=lambda p: p[1]), max(below, key=lambda p: p[1])
        if m0 != m1:
            return p1 + (target - m1) * (p0 - p1) / (m0 - m1)
    predicted, measured = min(points, key=lambda p: abs(p[1] - target))
    return target * predicted / measured


def predicted_search(
    widths_model: WidthModel,
    table: LatencyTable,
    budget: Budget,
    base: dict[str, float],
    round_to: int | None = None,
) -> BudgetResult:
    """Per-layer ratios (the shape `base`, scaled) whose predicted latency is within LATENCY_TOLERANCE of
    ``budget.fraction`` of the dense prediction; with `round_to` over aligned widths only. The result's
    ``dense_macs``/``pruned_macs`` hold predicted µs (``counts="latency"``)."""
    groups = [(g, widths_model.widths[g]) for g in widths_model.groups]

    def align(ratios: dict[str, float]) -> dict[str, float]:
        return align_ratios(groups, ratios, round_to)

    def predict(ratios: dict[str, float]) -> float:
        return sum(table.lookup_many(widths_model.shapes(align(ratios)).values()))

    dense = predict({})
    selected = {name: 1.0 if r > 0 else 0.0 for name, r in base.items()}
    fastest: list[float] = []  # predicted fractions the greedy steps visited

    def greedy(start: dict[str, float]) -> BudgetResult | None:
        found, low = _refine(widths_model, table, budget.fraction, start, selected, round_to)
        fastest.append(low)
        return found

    try:
        found = solve_budget(budget, base, predict, tolerance=LATENCY_TOLERANCE)
        result: BudgetResult | None = dataclasses.replace(found, ratios=align(found.ratios))
    except BudgetGap as gap:
        # Between two scales: one group at a time from the slower one, else from the dense model.
        result = greedy(align(gap.above)) or greedy({})
    except ConfigError:
        # The most pruned scale is not fast enough. Latency need not fall with width (a narrow conv may
        # take a slower kernel), so the fastest model is searched from the dense one, step by step.
        result = greedy({})
    if result is None:
        floor = min(fastest, default=1.0)
        raise ConfigError(
            f"budget {budget.kind}={budget.value:g} is out of reach: the fastest model the search found "
            f"({'round_to=' + str(round_to) + ', ' if round_to else ''}one coupled group at a time) is "
            f"predicted at {floor:.4f} of the dense latency ({1 / floor:.2f}× faster) at batch "
            f"{budget.batch_size}, {budget.threads} thread(s); ask for target_latency>={floor:.4f}"
        )
    return dataclasses.replace(
        result,
        dense_macs=round(dense),
        pruned_macs=round(predict(result.ratios)),
        reached_fraction=predict(result.ratios) / dense,
        counts="latency",
    )


def _refine(
    widths_model: WidthModel,
    table: LatencyTable,
    target: float,
    above: dict[str, float],
    selected: dict[str, float],
    round_to: int | None,
) -> tuple[BudgetResult | None, float]:
    """From `above` (slower than the target), move one coupled group of `selected` at a time to a narrower
    width (a multiple of `round_to` with alignment), each time the move that saves the most predicted time
    per channel removed without leaving the band's floor, until the band is reached (NetAdapt's loop, with
    time per channel standing in for its accuracy check). Every narrower width is a candidate, not only the
    next: a blocked kernel may run 56 channels slower than 64 and 48 faster. Moves that make the model
    slower are never taken. Returns the result (None if the band is never reached) and the smallest
    predicted fraction visited (the fastest reachable, for the error)."""
    widths = widths_model.widths
    groups = [g for g in widths_model.groups if selected.get(g[0], 0.0) > 0]
    pruned = {g: pruned_count(above.get(g[0], 0.0), widths[g], g[0]) for g in widths_model.groups}
    step = round_to or 1
    floor = {g: round_to or max(1, widths[g] - int(MAX_BUDGET_RATIO * widths[g])) for g in groups}

    def ratios_of(counts: dict[tuple[str, ...], int]) -> dict[str, float]:
        out = dict(above)
        for g, k in counts.items():
            out.update(dict.fromkeys(g, (k + 0.5) / widths[g] if k else 0.0))
        return out

    def predict(ratios: dict[str, float]) -> float:
        return sum(table.lookup_many(widths_model.shapes(ratios).values()))

    def narrower(g: tuple[str, ...]) -> list[int]:
        """Removed-channel counts of every narrower width of `g` allowed (aligned, at least the floor)."""
        kept = (widths[g] - pruned[g] - 1) // step * step
        # At most 8 widths down per move: without round_to every width is a candidate, and each new
        # shape costs a measurement.
        return [widths[g] - w for w in range(kept, floor[g] - 1, -step)][:8]

    dense = predict({})
    low, high = dense * target * (1 - LATENCY_TOLERANCE), dense * target * (1 + LATENCY_TOLERANCE)
    now = predict(ratios_of(pruned))
    fastest = now
    while now > high:
        moves = [(predict(ratios_of({**pruned, g: k})), g, k) for g in groups for k in narrower(g)]
        fastest = min([fastest] + [m[0] for m in moves])
        fitting = [m for m in moves if low <= m[0] < now]
        if not fitting:
            return None, fastest / dense
        now, group, count = max(fitting, key=lambda m: ((now - m[0]) / (m[2] - pruned[m[1]]), -m[0]))
        pruned[group] = count
    removed = sum(pruned[g] * len(g) for g in groups)
    channels = sum(widths[g] * len(g) for g in groups)
    result = BudgetResult(
        removed / max(1, channels), target, now / dense, round(dense), round(now), ratios_of(pruned)
    )
    return result, fastest / dense


#: A move of `fastest_aligned` must save at least this fraction of the predicted latency: smaller gains are
#: within the table's own timing noise.
FASTEST_MIN_GAIN = 0.002


def fastest_aligned(
    model: nn.Module,
    example: Tensor,
    counter: MacCounter,
    budget: Budget,
    found: BudgetResult,
    round_to: int,
    tolerance: float = LATENCY_TOLERANCE,
    table: LatencyTable | None = None,
    depth: bool = False,
) -> BudgetResult:
    """``round_to=auto`` at a MAC budget: among aligned widths near `found` (each pruned group's kept width
    one multiple of `round_to` narrower than found, the same, or one wider) whose MACs stay within
    `tolerance` of the budget, the widths the lookup table predicts fastest at the budget's batch size and
    threads. Local search from `found`: a move sets one group to another of its widths and then repairs
    the MACs (other groups one multiple at a time, each time the step that costs the least predicted time
    per MAC it puts back or saves the most per MAC it takes) until they are back in the band; the move that
    saves the most predicted time is taken while it saves at least FASTEST_MIN_GAIN. A blocked kernel may
    run 48 channels as fast as 40 and 56 much slower, so moving MACs between layers buys latency at the
    same budget. Which channels go is still the criterion's choice; only the widths move. With `depth`
    (``round_to=auto+depth``) every residual branch the surgery can remove whole also has width 0 among its
    choices, and the repair may then widen a group up to its full width (docs/architecture.md, "Depth")."""
    table = table or table_for(budget)
    base = layer_shapes(model, example)
    widths = counter.widths
    groups = [g for g in counter.groups if found.ratios.get(g[0], 0.0) > 0]
    # Ties (equal predicted time, as for the blocks of one stage) go to the group of smallest weights.
    groups.sort(key=lambda g: _weight_magnitude(model, g))
    kept = {g: widths[g] - pruned_count(found.ratios[g[0]], widths[g], g[0]) for g in groups}
    choices = {
        g: [w for w in (kept[g] - round_to, kept[g], kept[g] + round_to) if round_to <= w <= widths[g]]
        for g in groups
    }
    # With `depth` (``round_to=auto+depth``) a branch may go whole (width 0) where the surgery shows another
    # path carries the input on (`emptiable`): a narrow conv costs far more time per MAC than a wide one, a
    # removed one nothing.
    branches = set(emptiable(groups, model, example, counter)) if depth else set()
    for g in branches:
        choices[g].insert(0, 0)
    # Putting MACs back after a branch went whole may widen a group by more than one multiple (up to its
    # full width): the MACs of a removed block move to layers that run them faster.
    reach = {
        g: sorted({*choices[g], *range(round_to, widths[g] + 1, round_to)}) if branches else choices[g]
        for g in groups
    }
    low = counter.dense * budget.fraction * (1 - tolerance)
    high = counter.dense * budget.fraction * (1 + tolerance)
    State = dict[tuple[str, ...], int]

    def ratios_of(state: State) -> dict[str, float]:
        out = dict(found.ratios)
        for g, w in state.items():
            # (removed + 0.5) / width floors back to exactly the removed count; a whole group stays whole.
            ratio = (widths[g] - w + 0.5) / widths[g] if w < widths[g] else 0.0
            out.update(dict.fromkeys(g, EMPTY if w == 0 else ratio))
        return out

    layer_us: dict[tuple[str, int, int], float] = {}  # the search asks for the same widths many times

    def us_of(name: str, cin: int, cout: int) -> float:
        if (name, cin, cout) not in layer_us:
            layer_us[(name, cin, cout)] = table.lookup(base[name].with_widths(cin, cout))
        return layer_us[(name, cin, cout)]

    def cost(state: State) -> tuple[int, float]:
        """(MACs, predicted µs) of `state`."""
        ratios = ratios_of(state)
        out_lost, in_lost = counter.lost(ratios)
        us = sum(
            us_of(n, s.in_channels - in_lost.get(n, 0), s.out_channels - out_lost.get(n, 0))
            for n, s in base.items()
        )
        return counter.analytic(ratios), us

    def repaired(state: State, moved: tuple[str, ...]) -> tuple[float, State] | None:
        macs, us = cost(state)
        for _ in range(2 * len(groups)):
            if low <= macs <= high:
                return us, state
            step = round_to if macs < low else -round_to
            steps = []
            for h in groups:
                if h != moved and state[h] + step in reach[h]:
                    trial = {**state, h: state[h] + step}
                    steps.append((*cost(trial), trial))
            if not steps:
                return None
            landing = [s for s in steps if low <= s[0] <= high]
            if landing:
                macs, us, state = min(landing, key=lambda s: s[1])
            else:
                macs, us, state = min(steps, key=lambda s: (s[1] - us) / max(1, abs(s[0] - macs)))
        return None

    state, best = dict(kept), cost(kept)[1]
    while True:
        moves = [repaired({**state, g: w}, g) for g in groups for w in choices[g] if w != state[g]]
        done = [m for m in moves if m is not None]
        if not done:
            break
        us, better = min(done, key=lambda m: m[0])  # first of equals: the order of `groups` decides ties
        if us > best * (1 - FASTEST_MIN_GAIN):
            break
        state, best = better, us
    table.save()  # what `us_of` measured
    if state == kept:
        return found
    ratios = ratios_of(state)
    macs = counter.analytic(ratios)
    return dataclasses.replace(found, reached_fraction=macs / counter.dense, pruned_macs=macs, ratios=ratios)


def _weight_magnitude(model: nn.Module, group: tuple[str, ...]) -> float:
    """Mean |w| over the group's layers' weights (the L1 criterion's scale, one number per group)."""
    import torch

    weights = [model.get_submodule(name).weight.detach() for name in group]
    return float(torch.stack([w.abs().mean() for w in weights]).mean())


def emptiable(
    groups: list[tuple[str, ...]], model: nn.Module, example: Tensor, counter: MacCounter
) -> list[tuple[str, ...]]:
    """The groups whose every channel can go: the surgery cuts them (a branch whose consumers then only
    add their bias) and the model's output still depends on its input (another path, as a residual
    block's shortcut, carries it); the cut is checked for exactness when the plan is applied."""
    from prunekit.errors import SurgeryError
    from prunekit.surgery.channels import apply_with_report

    out = []
    for g in groups:
        plan = counter.plan({g[0]: EMPTY})
        if any(plan.get(name) for name in g):  # an uneven group keeps a unit back: not emptiable
            continue
        try:
            apply_with_report(model, plan, example, check_masking=False)
        except SurgeryError:
            continue
        out.append(g)
    return out


def confirm_latency(
    method: Method, dense: nn.Module, pruned: Pruned, example: Tensor, budget: Budget
) -> Pruned:
    """Record the predicted fraction the search met, and time the really pruned model against the dense one
    (interleaved, the budget's batch and threads, through `time_fraction`): the measured fraction with its
    spread goes into ``pruned.details["latency"]``, beside the candidates the search timed; a measurement
    far from the target is a warning, not an error (the machine may be loaded)."""
    shape = tuple(example.shape[1:])
    dense_us = predicted_latency(dense, example, budget)
    pruned_us = predicted_latency(pruned.model, example, budget)
    found = pruned.budget
    predicted = pruned_us / dense_us
    # The search may have aimed the table elsewhere to correct it (`meet_latency_budget`); what must hold
    # is that the model built is the one the search predicted.
    aimed = found.reached_fraction if found is not None and found.counts == "latency" else budget.fraction
    if abs(predicted - aimed) > LATENCY_TOLERANCE * aimed + 1e-12:
        raise PrunekitError(
            f"method {method.name!r}: the pruned model is predicted at {predicted:.4f} of the dense latency, "
            f"not the {aimed:.4f} the budget search found"
        )
    got = time_fraction(dense, pruned.model, shape, budget.batch_size, budget.threads)
    measured = got.fraction
    per_layer = layer_shapes(pruned.model, example)
    table = table_for(budget)
    pruned.details = {
        **pruned.details,
        "latency": {
            "batch_size": budget.batch_size,
            "threads": budget.threads,
            "target_fraction": budget.fraction,
            "predicted_fraction": predicted,
            "measured_fraction": measured,
            "measured_fraction_range": [got.low, got.high],
            "dense_ms": got.dense_ms,
            "pruned_ms": got.pruned_ms,
            # The candidates the search timed while correcting the table (scoring methods).
            "search_steps": list(found.measured) if found is not None else [],
            "predicted_dense_ms": dense_us / 1e3,
            "predicted_pruned_ms": pruned_us / 1e3,
            "predicted_layer_us": {name: table.lookup(s) for name, s in per_layer.items()},
        },
    }
    if abs(measured - budget.fraction) > MEASURE_WARNING * budget.fraction:
        corrected = found is not None and len(found.measured) > 0
        warnings.warn(
            f"latency budget: target {budget.fraction:.3f} of the dense latency, predicted {predicted:.3f}, "
            f"measured {measured:.3f} (range {got.low:.3f}–{got.high:.3f}); "
            + (
                "the measurements during the search and this one disagree (a loaded machine)"
                if corrected
                else "the lookup table and the whole model disagree (a loaded machine, or per-op overhead "
                "the table does not see)"
            ),
            stacklevel=3,
        )
    pruned.budget = BudgetResult(
        found.ratio if found else float("nan"),
        budget.fraction,
        predicted,
        round(dense_us),
        round(pruned_us),
        found.ratios if found else {},
        knob=found.knob if found else str(method.knob),
        counts="latency",
        measured=found.measured if found else (),
    )
    return pruned
