"""The per-layer latency lookup table (cache key, invalidation), `--round-to auto`'s choice, and the latency
budget search with a fake deterministic timer (exact expected allocations)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.measure import latency_table
from prunekit.measure.latency_table import LatencyTable, LayerShape, choose_round_to, preferred_round_to
from prunekit.methods import latency_budget
from prunekit.methods.base import prunable_groups
from prunekit.methods.latency_budget import Measured, WidthModel, corrected_aim, meet_latency_budget
from prunekit.methods.selection import Budget, Selection


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(latency_budget, "_TABLES", {})
    return tmp_path / "cache"


class CountingTimer:
    """µs = MACs per image / 100 + 5 (a fixed per-layer overhead); counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, shape: LayerShape, batch: int, threads: int, device: str) -> float:
        self.calls.append((shape.key(), batch, threads))
        return shape.macs() / 100 + 5


class ModelTimer:
    """A fake whole-model timer: µs = Σ over conv/linear layers of MACs/100 (+ `per_layer` µs each). With
    ``per_layer=5`` it agrees with `CountingTimer`'s table; with 0 the whole model lacks the table's per-layer
    overhead, as a real model whose layers share caches runs faster than its layers timed alone."""

    def __init__(self, per_layer: float = 5.0) -> None:
        self.per_layer = per_layer
        self.calls = 0

    def us(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        shapes = latency_budget.layer_shapes(model, torch.zeros(2, *input_shape)).values()
        return sum(s.macs() / 100 + self.per_layer for s in shapes)

    def __call__(
        self, dense: nn.Module, candidate: nn.Module, input_shape: tuple[int, ...], batch: int, threads: int
    ) -> Measured:
        self.calls += 1
        d, c = self.us(dense, input_shape), self.us(candidate, input_shape)
        return Measured(c / d, c / d, c / d, d / 1e3, c / 1e3)


class TwoConv(nn.Module):
    """1×4×4 input; MACs: conv1 16·16·9 = 2304, conv2 16·16·16 = 4096, fc 16·2 = 32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


CONV = LayerShape(16, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, (32, 32))


def test_layer_shape_key_and_macs() -> None:
    assert CONV.key() == "conv:16->8:k3x3:s1x1:p1x1:d1x1:g1:in32x32"
    assert CONV.macs() == 32 * 32 * 8 * 16 * 9
    strided = LayerShape(16, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, (32, 32))
    assert strided.macs() == 16 * 16 * 8 * 16 * 9
    depthwise = LayerShape(16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 16, (8, 8))
    assert depthwise.with_widths(8, 8).groups == 8 and depthwise.macs() == 64 * 16 * 9
    assert LayerShape(64, 10).key() == "linear:64->10" and LayerShape(64, 10).macs() == 640


def test_table_caches_per_shape_batch_threads(_cache: Path) -> None:
    timer = CountingTimer()
    table = LatencyTable(batch_size=4, threads=1, timer=timer)
    assert table.lookup_many([CONV, CONV]) == [CONV.macs() / 100 + 5] * 2
    assert timer.calls == [(CONV.key(), 4, 1)]  # one measurement per shape
    # a new table on the same machine, batch and threads reads the file: nothing is measured again
    again = LatencyTable(batch_size=4, threads=1, timer=timer)
    assert again.lookup(CONV) == CONV.macs() / 100 + 5 and len(timer.calls) == 1
    assert again.path.parent == _cache
    # another batch size, thread count or input size is another measurement
    LatencyTable(batch_size=8, threads=1, timer=timer).lookup(CONV)
    LatencyTable(batch_size=4, threads=2, timer=timer).lookup(CONV)
    again.lookup(LayerShape(16, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, (16, 16)))
    assert [c[1:] for c in timer.calls] == [(4, 1), (8, 1), (4, 2), (4, 1)]
    assert (
        len({t.path for t in (again, LatencyTable(8, 1, timer=timer), LatencyTable(4, 2, timer=timer))}) == 3
    )


def test_table_invalidation(_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timer = CountingTimer()
    table = LatencyTable(timer=timer)
    table.lookup_many([CONV])
    stored = json.loads(table.path.read_text())
    assert stored["entries"] == {CONV.key(): CONV.macs() / 100 + 5}
    assert stored["fingerprint"]["torch"] == torch.__version__
    # a file from another machine (or torch, or format) under the same name is ignored, not trusted
    stored["fingerprint"]["processor"] = "some other CPU"
    table.path.write_text(json.dumps(stored))
    LatencyTable(timer=timer).lookup(CONV)
    assert len(timer.calls) == 2
    # a corrupt file is ignored too
    table.path.write_text("{not json")
    assert LatencyTable(timer=timer).lookup(CONV) == CONV.macs() / 100 + 5 and len(timer.calls) == 3
    # a new table format moves to another file and measures again
    monkeypatch.setattr(latency_table, "TABLE_FORMAT", latency_table.TABLE_FORMAT + 1)
    newer = LatencyTable(timer=timer)
    assert newer.path != table.path
    newer.lookup(CONV)
    assert len(timer.calls) == 4
    newer.save()
    newer.invalidate()
    assert not newer.path.exists() and newer.entries == {}
    newer.lookup(CONV)
    assert len(timer.calls) == 5
    with pytest.raises(ConfigError, match="batch size and threads"):
        LatencyTable(batch_size=0)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(8, 8), (16, 16), (4, 4), (None, 1)],
)
def test_choose_round_to_finds_the_hardware_step(step: int | None, expected: int) -> None:
    # latency that jumps every `step` channels (blocked kernels), or grows smoothly (None)
    widths = range(8, 65)
    lat = {w: 100 + (math.ceil(w / step) * step if step else w) * 3.0 for w in widths}
    assert choose_round_to(lat) == expected


def test_preferred_round_to_is_measured_once_and_cached(_cache: Path) -> None:
    calls: list[int] = []

    def stepped(shape: LayerShape, batch: int, threads: int, device: str) -> float:
        calls.append(shape.out_channels)
        return 50.0 + 10 * math.ceil(shape.out_channels / 16)

    assert preferred_round_to(threads=1, timer=stepped) == 16
    assert sorted(calls) == sorted(list(latency_table.SWEEP_WIDTHS) * latency_table.SWEEP_PASSES)
    assert preferred_round_to(threads=1, timer=stepped) == 16
    assert len(calls) == len(latency_table.SWEEP_WIDTHS) * latency_table.SWEEP_PASSES  # cached
    assert len(list(_cache.glob("round_to-*.json"))) == 1


def test_width_model_matches_real_surgery() -> None:
    model = prunekit.models.create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    widths = WidthModel(model, x)
    ratios = {name: 0.5 for g in widths.groups for name in g}
    ratios.update(dict.fromkeys(widths.groups[1], 0.25))
    predicted = widths.shapes(ratios)
    from prunekit.methods.budget import MacCounter
    from prunekit.surgery import apply

    real = latency_budget.layer_shapes(apply(model, MacCounter(model, x).plan(ratios), x), x)
    assert predicted == real


def fake_prune(monkeypatch: pytest.MonkeyPatch, per_layer: float = 5.0) -> CountingTimer:
    """Fake the table's layer timer and the whole-model timer (agreeing with the table by default)."""
    timer = CountingTimer()
    monkeypatch.setattr(latency_table, "time_layer", timer)
    monkeypatch.setattr(latency_budget, "time_fraction", ModelTimer(per_layer))
    return timer


# TwoConv under CountingTimer (µs = MACs/100 + 5 per layer, widths kept by conv1, conv2):
#   (16, 16): 28.04 + 45.96 + 5.32 = 79.32                         1.0000
#   (16,  8): 28.04 + 25.48 + 5.16 = 58.68                         0.7398
#   ( 8, 16): 16.52 + 25.48 + 5.32 = 47.32                         0.5966
#   ( 8,  8): 16.52 + 15.24 + 5.16 = 36.92                         0.4655
DENSE_US = 79.32


@pytest.mark.parametrize(
    ("target", "kept", "fraction"),
    [(0.6, (8, 16), 47.32 / DENSE_US), (0.47, (8, 8), 36.92 / DENSE_US), (0.74, (16, 8), 58.68 / DENSE_US)],
)
def test_latency_search_exact_allocation(target: float, kept: tuple[int, int], fraction: float) -> None:
    model, x = TwoConv().eval(), torch.randn(2, 1, 4, 4)
    table = LatencyTable(timer=CountingTimer())
    base = {"conv1": 1.0, "conv2": 1.0}
    timer = ModelTimer()  # agrees with the table: the first candidate is measured where predicted
    budget = Budget("target_latency", target)
    result = meet_latency_budget(model, x, budget, base, round_to=8, table=table, timer=timer)
    widths = {g.members[0]: g.out_channels for g in prunable_groups(model, x)}
    got = tuple(widths[n] - int(result.ratios[n] * widths[n]) for n in ("conv1", "conv2"))
    assert got == kept
    assert result.counts == "latency" and result.dense_macs == round(DENSE_US)
    assert result.reached_fraction == pytest.approx(fraction)
    assert timer.calls == 1 and len(result.measured) == 1
    assert result.measured[0]["measured"] == pytest.approx(fraction)


def kept_widths(model: nn.Module, x: torch.Tensor, ratios: dict[str, float]) -> tuple[int, ...]:
    widths = {g.members[0]: g.out_channels for g in prunable_groups(model, x)}
    return tuple(widths[n] - int(ratios[n] * widths[n]) for n in ("conv1", "conv2"))


# TwoConv with widths (a, b): table T = 15 + 1.44a + 0.16ab + 0.02b µs (CountingTimer, 5 µs per layer);
# the whole model, measured, M = 1.44a + 0.16ab + 0.02b (ModelTimer(per_layer=0)). Dense: 79.32 and 64.32.
def table_us(a: int, b: int) -> float:
    return 15 + 1.44 * a + 0.16 * a * b + 0.02 * b


def measured_us(a: int, b: int) -> float:
    return 1.44 * a + 0.16 * a * b + 0.02 * b


def test_latency_search_corrects_the_table_by_measuring() -> None:
    # round_to=4, target 0.6. The table's answer (12, 8): predicted 47.8/79.32 = 0.6026, measured
    # 32.8/64.32 = 0.5100, 15 % under the target. Corrected: the table is searched for
    # 0.6 · 0.6026 / 0.5100 = 0.7090, which gives (12, 12): predicted 0.7005, measured 40.56/64.32 =
    # 0.6306, within 5.1 % of 0.6. The correction from there (0.6666) is out of the table's reach at
    # round_to=4 within 2 % (the widths jump 0.60 → 0.70), so the closer of the two candidates is kept.
    model, x = TwoConv().eval(), torch.randn(2, 1, 4, 4)
    table, timer = LatencyTable(timer=CountingTimer()), ModelTimer(per_layer=0)
    base = {"conv1": 1.0, "conv2": 1.0}
    result = meet_latency_budget(
        model, x, Budget("target_latency", 0.6), base, round_to=4, table=table, timer=timer
    )
    assert kept_widths(model, x, result.ratios) == (12, 12)
    assert result.target == 0.6 and result.reached_fraction == pytest.approx(table_us(12, 12) / DENSE_US)
    first, second = result.measured
    assert first["table_target"] == 0.6
    assert first["predicted"] == pytest.approx(table_us(12, 8) / DENSE_US)  # 0.6026
    assert first["measured"] == pytest.approx(measured_us(12, 8) / 64.32)  # 0.5100
    assert second["table_target"] == pytest.approx(0.6 * (47.8 / DENSE_US) / (32.8 / 64.32))  # 0.7090
    assert second["measured"] == pytest.approx(40.56 / 64.32)  # 0.6306
    assert timer.calls == 2


def test_latency_search_interpolates_between_measured_candidates() -> None:
    # No round_to, target 0.6. Candidates: the table's (10, 11) measured 0.5009; corrected by its ratio to
    # (12, 12) measured 0.6306; the target now lies between two measurements, so the next table target is
    # their linear interpolation, which gives (12, 11): measured 38.62/64.32 = 0.6004, within 5 %: done.
    model, x = TwoConv().eval(), torch.randn(2, 1, 4, 4)
    table, timer = LatencyTable(timer=CountingTimer()), ModelTimer(per_layer=0)
    base = {"conv1": 1.0, "conv2": 1.0}
    result = meet_latency_budget(model, x, Budget("target_latency", 0.6), base, table=table, timer=timer)
    assert kept_widths(model, x, result.ratios) == (12, 11)
    steps = [(s["predicted"], s["measured"]) for s in result.measured]
    expected = [
        (table_us(a, b) / DENSE_US, measured_us(a, b) / 64.32) for a, b in ((10, 11), (12, 12), (12, 11))
    ]
    assert [v for step in steps for v in step] == pytest.approx([v for step in expected for v in step])
    (p0, m0), (p1, m1) = steps[:2]
    assert result.measured[2]["table_target"] == pytest.approx(p0 + (0.6 - m0) * (p1 - p0) / (m1 - m0))
    assert abs(steps[-1][1] - 0.6) <= 0.05 * 0.6


def test_a_wild_measurement_moves_the_table_target_at_most_1_5x() -> None:
    # A machine under load measures every candidate at a fifth of its predicted fraction: the correction
    # 0.5 · 0.5 / 0.1 = 2.5 is clamped to 0.5 · 1.5 = 0.75; from there the same clamp leads back to the
    # widths already timed, so the search stops with the closer of the two (0.15 against 0.10).
    def propose(budget: Budget) -> tuple[float, nn.Module, float, float]:
        return budget.fraction, nn.Identity(), budget.fraction, budget.fraction

    def loaded(dense: nn.Module, candidate: nn.Module, shape: tuple[int, ...], b: int, t: int) -> Measured:
        return Measured(0.2 * aimed[-1], 0.0, 1.0, 1.0, 1.0)

    aimed: list[float] = []

    def recording(budget: Budget) -> tuple[float, nn.Module, float, float]:
        aimed.append(budget.fraction)
        return propose(budget)

    chosen, steps = latency_budget.land_on_measurement(
        nn.Identity(), torch.zeros(1, 1), Budget("target_latency", 0.5), recording, loaded
    )
    assert aimed == [0.5, 0.75, 0.75] and chosen == 0.75
    assert [st["measured"] for st in steps] == pytest.approx([0.1, 0.15])


def test_corrected_aim() -> None:
    # one candidate: its error as a ratio (predicted 0.5 measured 0.4 -> search for 0.5 · 0.5 / 0.4)
    assert corrected_aim(0.5, [(0.5, 0.4)]) == pytest.approx(0.625)
    # both on one side: the nearest one's ratio
    assert corrected_aim(0.5, [(0.5, 0.3), (0.6, 0.45)]) == pytest.approx(0.5 * 0.6 / 0.45)
    # on either side: the line through the nearest two, (0.6, 0.45) and (0.8, 0.55) -> 0.7
    assert corrected_aim(0.5, [(0.5, 0.3), (0.6, 0.45), (0.8, 0.55), (0.9, 0.7)]) == pytest.approx(0.7)


def test_unreachable_latency_names_the_fastest() -> None:
    model, x = TwoConv().eval(), torch.randn(2, 1, 4, 4)
    table = LatencyTable(timer=CountingTimer())
    base = {"conv1": 1.0, "conv2": 1.0}
    with pytest.raises(
        ConfigError, match=r"predicted at 0\.4655 of the dense latency .*target_latency>=0\.4655"
    ):
        meet_latency_budget(model, x, Budget("target_latency", 0.3), base, round_to=8, table=table)


def test_latency_budget_through_the_api_records_predicted_and_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timer = fake_prune(monkeypatch)
    model, x = TwoConv().eval(), torch.randn(2, 1, 4, 4)
    method = prunekit.methods.create_method("l1", Selection.of(speedup_latency=1 / 0.6, round_to=8))
    assert method.selection.budget.fraction == pytest.approx(0.6)
    pruned = prunekit.methods.meet(method, model, x)
    assert {n: m.out_channels for n, m in pruned.model.named_modules() if isinstance(m, nn.Conv2d)} == {
        "conv1": 8,
        "conv2": 16,
    }
    record = pruned.details["latency"]
    assert record["predicted_fraction"] == pytest.approx(47.32 / DENSE_US)
    assert record["predicted_layer_us"] == pytest.approx({"conv1": 16.52, "conv2": 25.48, "fc": 5.32})
    # the fake whole-model timer agrees with the table: one candidate timed in the search, then the model
    assert record["measured_fraction"] == pytest.approx(47.32 / DENSE_US)
    assert record["measured_fraction_range"] == pytest.approx([47.32 / DENSE_US] * 2)
    assert record["dense_ms"] == pytest.approx(DENSE_US / 1e3) and record["pruned_ms"] == pytest.approx(
        0.04732
    )
    assert [s["measured"] for s in record["search_steps"]] == pytest.approx([47.32 / DENSE_US])
    assert pruned.budget.counts == "latency" and timer.calls and len(pruned.budget.measured) == 1


def test_latency_budget_through_the_api_lands_on_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same search as test_latency_search_corrects_the_table_by_measuring, through `meet`: the model
    # built is the second candidate, and the final measurement is recorded beside the search's two.
    fake_prune(monkeypatch, per_layer=0)
    model, x = TwoConv().eval(), torch.randn(2, 1, 4, 4)
    method = prunekit.methods.create_method("l1", Selection.of(target_latency=0.6, round_to=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.6306 is within 10 % of 0.6: no warning
        pruned = prunekit.methods.meet(method, model, x)
    assert {n: m.out_channels for n, m in pruned.model.named_modules() if isinstance(m, nn.Conv2d)} == {
        "conv1": 12,
        "conv2": 12,
    }
    record = pruned.details["latency"]
    assert record["target_fraction"] == 0.6
    assert record["predicted_fraction"] == pytest.approx(table_us(12, 12) / DENSE_US)
    assert record["measured_fraction"] == pytest.approx(40.56 / 64.32)
    assert len(record["search_steps"]) == 2 and pruned.budget.measured == tuple(record["search_steps"])


def test_bad_latency_budgets_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"target_latency=1\.5 must be in \(0, 1\)"):
        Selection.of(target_latency=1.5)
    with pytest.raises(ConfigError, match="speedup_latency=0.5 must be > 1"):
        prunekit.methods.parse_selection("speedup_latency=0.5")
    with pytest.raises(ConfigError, match="give one of"):
        Selection.of(target_latency=0.5, target_macs=0.5)


def slimmable_net() -> nn.Module:
    """Two BN-led 3×3 convs with distinct positive BN scales (slimming's criterion), in eval mode."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=torch.Generator().manual_seed(1)) + 0.01)
    return model


def test_knob_methods_meet_latency_budgets_through_their_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    # Network slimming has its own allocation (a global BN threshold): the knob search bisects its ratio
    # with the predicted latency as the cost, then the real model is timed.
    fake_prune(monkeypatch)
    model = slimmable_net()
    x = torch.randn(2, 3, 8, 8)
    method = prunekit.methods.create_method("slimming", Selection.of(target_latency=0.6))
    pruned = prunekit.methods.meet(method, model, x)
    record = pruned.details["latency"]
    assert abs(record["predicted_fraction"] - 0.6) <= 0.02 * 0.6
    assert pruned.budget.knob == "ratio" and pruned.budget.counts == "latency"
    # the prediction is the fake timer's sum over the pruned model's layers, recomputed here by hand
    shapes = latency_budget.layer_shapes(pruned.model, x)
    assert record["predicted_pruned_ms"] == pytest.approx(
        sum(s.macs() / 100 + 5 for s in shapes.values()) / 1e3
    )


def test_knob_methods_correct_the_table_by_measuring_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # A whole model with 1000 µs per layer that the table (5 µs) does not see: pruning saves relatively less
    # than predicted. Slimming's knob search is redone for corrected targets until a candidate measures
    # within 5 % of 0.6; each correction is the nearest candidate's ratio (all measured above the target).
    fake_prune(monkeypatch, per_layer=1000)
    model = slimmable_net()
    x = torch.randn(2, 3, 8, 8)
    pruned = prunekit.methods.meet(
        prunekit.methods.create_method("slimming", Selection.of(target_latency=0.6)), model, x
    )
    steps = pruned.details["latency"]["search_steps"]
    assert len(steps) >= 2 and steps[0]["table_target"] == 0.6
    assert steps[0]["measured"] > 0.6 * 1.05  # the table's own answer measures too slow
    for k in range(1, len(steps)):
        nearest = min(steps[:k], key=lambda st: abs(st["measured"] - 0.6))
        assert steps[k]["table_target"] == pytest.approx(0.6 * nearest["predicted"] / nearest["measured"])
    assert abs(steps[-1]["measured"] - 0.6) <= 0.05 * 0.6
    timer = ModelTimer(per_layer=1000)
    by_hand = timer.us(pruned.model, (3, 8, 8)) / timer.us(model, (3, 8, 8))
    assert pruned.details["latency"]["measured_fraction"] == pytest.approx(by_hand)
    assert by_hand == pytest.approx(steps[-1]["measured"])
    assert pruned.budget.counts == "latency" and pruned.budget.measured == tuple(steps)


def test_cli_latency_budget_and_profile_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import SYNTHETIC_28
    from prunekit import model_file
    from prunekit.cli import main

    fake_prune(monkeypatch)
    path = model_file.save(
        prunekit.models.create("lenet5"),
        tmp_path / "dense.safetensors",
        info={"dataset": "synthetic", "data_options": {"shape": [1, 28, 28]}, "input_shape": [1, 28, 28]},
    )
    out = tmp_path / "run"
    argv = ["prune", str(path), "--method", "l1", "--target-latency", "0.6", "--round-to", "4", *SYNTHETIC_28]
    assert main([*argv, "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "latency at batch 1, 1 thread(s): target 0.600 of dense, predicted 0.5" in printed
    summary = json.loads((out / "summary.json").read_text())
    record = summary["l1"]["latency"]
    assert abs(record["predicted_fraction"] - 0.6) <= 0.012 and summary["budget"]["counts"] == "latency"
    assert all(w % 4 == 0 for n, w in summary["widths_after"].items() if w != summary["widths_before"][n])
    assert main(["profile", str(path), "--batch-sizes", "1", "--threads", "1", "--latency-table"]) == 0
    printed = capsys.readouterr().out
    # conv1: 24·24·20·25 MACs = 288000 -> fake 2885 µs
    assert "conv1" in printed and "predicted     2885.0 µs" in printed
    # GMAC/s = MACs of the layer / its measured µs / 1e3, on the line of each layer
    import re

    line = next(row for row in printed.splitlines() if row.strip().startswith("conv1 "))
    measured, rate = re.search(r"measured\s+([\d.]+) µs\s+([\d.]+) GMAC/s", line).groups()
    assert float(rate) == pytest.approx(288000 / float(measured) / 1e3, rel=0.01, abs=0.006)
