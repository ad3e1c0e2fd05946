"""Latency budgets: ``target_latency=F`` (fraction of the dense model's deployed latency) and
``speedup_latency=S``, at the budget's batch size and thread count.

Built as NetAdapt and HALP do. A per-layer lookup table (`measure.latency_table`) times every conv/linear
shape the search visits, once per machine; a model's predicted latency is the sum over its layers. The
search moves the same knob as a MAC budget: scoring methods scale their per-layer ratios (bisection, then
one coupled group at a time to the next width, largest predicted drop first), every other method bisects its
own knob with the prediction as the cost. The pruned model is then timed for real against the dense one,
interleaved, and both fractions (predicted and measured, with the measurement's spread) are recorded: the
prediction is what the search met, the measurement is what the user gets.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.measure.latency_table import LatencyTable, LayerShape, layer_shape
from prunekit.methods.budget import KNOB_TOLERANCE, MAX_BUDGET_RATIO, BudgetGap, BudgetResult, solve_budget
from prunekit.methods.selection import Budget, align_ratios, pruned_count
from prunekit.models.probe import probe

if TYPE_CHECKING:
    from prunekit.methods.base import Method, Pruned

#: Relative distance between the predicted latency and the target that the search accepts.
LATENCY_TOLERANCE = KNOB_TOLERANCE
#: A measured fraction this far (relative) from the predicted one earns a warning: the table misled.
MEASURE_WARNING = 0.10

#: Tables by (batch, threads, device), so one run measures each shape once. Tests clear it.
_TABLES: dict[tuple[int, int, str], LatencyTable] = {}


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
) -> BudgetResult:
    """Per-layer ratios (the shape `base`, scaled) whose predicted latency is within LATENCY_TOLERANCE of
    ``budget.fraction`` of the dense prediction; with `round_to` over aligned widths only. The result's
    ``dense_macs``/``pruned_macs`` hold predicted µs (``counts="latency"``)."""
    table = table or table_for(budget)
    widths_model = WidthModel(model, example)
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


def confirm_latency(
    method: Method, dense: nn.Module, pruned: Pruned, example: Tensor, budget: Budget
) -> Pruned:
    """Record the predicted fraction the search met, and time the really pruned model against the dense one
    (interleaved, the budget's batch and threads): the measured fraction with its spread goes into
    ``pruned.details["latency"]``; a measurement far from the prediction is a warning, not an error (the
    machine may be loaded)."""
    from prunekit.measure.timing import compare_latency, speedup

    shape = tuple(example.shape[1:])
    dense_us = predicted_latency(dense, example, budget)
    pruned_us = predicted_latency(pruned.model, example, budget)
    found = pruned.budget
    predicted = pruned_us / dense_us
    if abs(predicted - budget.fraction) > LATENCY_TOLERANCE * budget.fraction + 1e-12:
        raise PrunekitError(
            f"method {method.name!r}: the pruned model is predicted at {predicted:.4f} of the dense latency, "
            f"not the {budget.fraction:.4f} the budget asks for"
        )
    timed = compare_latency(
        {"dense": dense, "pruned": pruned.model},
        shape,
        batch_size=budget.batch_size,
        threads=budget.threads,
        warmup=3,
        repeats=30,
        rounds=5,
    )
    gain = speedup(timed["dense"].stats, timed["pruned"].stats)
    measured = 1.0 / gain.ratio
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
            "measured_fraction_range": [1.0 / gain.high, 1.0 / gain.low],
            "dense_ms": timed["dense"].median_ms,
            "pruned_ms": timed["pruned"].median_ms,
            "predicted_dense_ms": dense_us / 1e3,
            "predicted_pruned_ms": pruned_us / 1e3,
            "predicted_layer_us": {name: table.lookup(s) for name, s in per_layer.items()},
        },
    }
    if abs(measured - predicted) > MEASURE_WARNING * predicted:
        warnings.warn(
            f"latency budget: predicted {predicted:.3f} of the dense latency, measured {measured:.3f} "
            f"(range {1 / gain.high:.3f}–{1 / gain.low:.3f}); the lookup table and the whole model disagree "
            "(a loaded machine, or per-op overhead the table does not see)",
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
    )
    return pruned
