"""The per-layer latency lookup table (cache key, invalidation), `--round-to auto`'s choice, and the latency
budget search with a fake deterministic timer (exact expected allocations)."""

from __future__ import annotations

import json
import math
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
from prunekit.methods.latency_budget import WidthModel, meet_latency_budget
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


def fake_prune(monkeypatch: pytest.MonkeyPatch) -> CountingTimer:
    timer = CountingTimer()
    monkeypatch.setattr(latency_table, "time_layer", timer)
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
    result = meet_latency_budget(model, x, Budget("target_latency", target), base, round_to=8, table=table)
    widths = {g.members[0]: g.out_channels for g in prunable_groups(model, x)}
    got = tuple(widths[n] - int(result.ratios[n] * widths[n]) for n in ("conv1", "conv2"))
    assert got == kept
    assert result.counts == "latency" and result.dense_macs == round(DENSE_US)
    assert result.reached_fraction == pytest.approx(fraction)


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
    low, high = record["measured_fraction_range"]
    assert 0 < low <= record["measured_fraction"] <= high  # real timing of the real model, with spread
    assert pruned.budget.counts == "latency" and timer.calls


def test_bad_latency_budgets_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"target_latency=1\.5 must be in \(0, 1\)"):
        Selection.of(target_latency=1.5)
    with pytest.raises(ConfigError, match="speedup_latency=0.5 must be > 1"):
        prunekit.methods.parse_selection("speedup_latency=0.5")
    with pytest.raises(ConfigError, match="give one of"):
        Selection.of(target_latency=0.5, target_macs=0.5)


def test_knob_methods_meet_latency_budgets_through_their_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    # Network slimming has its own allocation (a global BN threshold): the knob search bisects its ratio
    # with the predicted latency as the cost, then the real model is timed.
    fake_prune(monkeypatch)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=torch.Generator().manual_seed(1)) + 0.01)
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
