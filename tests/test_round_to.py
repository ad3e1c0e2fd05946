"""round_to: kept widths that are multiples of N, in the selection language, the API, the budget search
and for methods that choose their own widths."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.measure import cost
from prunekit.methods.alignment import resolve_round_to
from prunekit.methods.selection import Selection, align_ratios, aligned_width, parse_selection, pruned_count
from prunekit.models import create
from test_latency_budget import TwoConv  # 1×4×4 input, 6432 MACs


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_round_to_in_the_selection_language() -> None:
    sel = parse_selection("0.5, round_to=8")
    assert (sel.uniform, sel.round_to, sel.budget) == (0.5, 8, None)
    sel = parse_selection("target_macs=0.4,round_to=16")
    assert (sel.budget.kind, sel.budget.value, sel.round_to) == ("target_macs", 0.4, 16)
    assert parse_selection("conv*:0.5").round_to is None
    # the API's keyword writes the same expression, which parses back to the same selection
    api = Selection.of(target_macs=0.5, round_to=8)
    assert api.spec == "target_macs=0.5,round_to=8"
    assert parse_selection(api.spec) == api
    only = Selection.of(round_to=4)
    assert only.only_round_to and only.spec == "round_to=4"


@pytest.mark.parametrize(
    ("spec", "column", "fragment"),
    [
        ("0.5,round_to=0", 13, "≥ 1"),
        ("0.5,round_to=x", 13, "whole number"),
        ("0.5,round_to=2.5", 13, "whole number"),
        ("round_to=8,round_to=4", 11, "given twice"),
    ],
)
def test_bad_round_to_shows_the_position(spec: str, column: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_selection(spec)
    expression, caret = str(info.value).splitlines()[-2:]
    assert caret.index("^") - 2 == column


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "eight"])
def test_api_round_to_refuses_non_positive_integers(bad: object) -> None:
    with pytest.raises(ConfigError, match="round_to"):
        resolve_round_to(bad)  # type: ignore[arg-type]
    if not isinstance(bad, str):
        with pytest.raises(ConfigError, match="round_to"):
            Selection.of(ratio=0.5, round_to=bad)  # type: ignore[arg-type]
    assert resolve_round_to("16") == 16 and resolve_round_to(None) is None


@pytest.mark.parametrize(
    ("kept", "n", "r", "expected"),
    [
        (5, 16, 8, 8),  # 5/8 = 0.625 -> nearest multiple 8
        (12, 16, 8, 8),  # 12/8 = 1.5 rounds up to 16 = full width, so the largest below it: 8
        (13, 32, 8, 16),  # 1.625 -> 2 multiples
        (3, 16, 8, 8),  # never below round_to
        (20, 24, 8, 16),  # 2.5 -> 3 multiples = 24 = full width -> 16
        (7, 8, 8, None),  # no multiple of 8 below 8 exists
        (9, 10, 1, 9),  # round_to=1 changes nothing
    ],
)
def test_aligned_width(kept: int, n: int, r: int, expected: int | None) -> None:
    assert aligned_width(kept, n, r) == expected


def test_align_ratios_floors_back_to_the_aligned_count() -> None:
    groups = [(("a",), 16), (("b", "c"), 32), (("d",), 8), (("e",), 64)]
    ratios = {"a": 0.5, "b": 0.3, "c": 0.3, "d": 0.5, "e": 0.01}
    aligned = align_ratios(groups, ratios, 8)
    # a: removes 8, keeps 8 (aligned); b/c: remove int(9.6) = 9, keep 23 -> 24; d: too narrow, left whole;
    # e: int(0.64) = 0 removed, so it stays whole (full width is allowed when unpruned)
    assert aligned == {"a": 8.5 / 16, "b": 8.5 / 32, "c": 8.5 / 32, "d": 0.0, "e": 0.01}
    assert [pruned_count(aligned[k], n, k) for k, n in (("a", 16), ("b", 32), ("e", 64))] == [8, 8, 0]
    with pytest.raises(ConfigError, match="'d' has 8 output channels"):
        align_ratios(groups, ratios, 8, strict=True)


def test_uniform_ratio_on_resnet20_keeps_multiples() -> None:
    model = create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    small = prunekit.prune(model, x, method="l1", ratio=0.4, round_to=8)
    before, after = conv_widths(model), conv_widths(small)
    # 16 * 0.6 = 9.6 kept -> 8; 32: keeps 20 -> 24; 64: keeps 39 -> 40
    expected = {16: 8, 32: 24, 64: 40}
    assert {name: after[name] for name in before} == {name: expected[w] for name, w in before.items()}


def test_budget_met_within_two_percent_with_aligned_widths() -> None:
    model = create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    dense = cost(model, (3, 32, 32)).macs
    for target, r in ((0.5, 8), (0.3, 8), (0.5, 16)):
        small = prunekit.prune(model, x, method="fpgm", target_macs=target, round_to=r)
        widths = conv_widths(small)
        before = conv_widths(model)
        changed = {n: w for n, w in widths.items() if w != before[n]}
        assert changed, "something was pruned"
        assert all(w % r == 0 and r <= w < before[n] for n, w in changed.items())
        assert abs(cost(small, (3, 32, 32)).macs / dense - target) <= 0.02 * target


def test_budget_without_an_aligned_plan_names_the_closest_two() -> None:
    x = torch.randn(2, 1, 4, 4)
    # Aligned plans (kept conv1, conv2): (16, 16) 1.0; (16, 8) 4368/6432 = 0.6791; (8, 16) 3232/6432 =
    # 0.5025; (8, 8) 2192/6432 = 0.3408. 0.6 lies between 0.6791 and 0.5025.
    with pytest.raises(ConfigError, match=r"0\.6791 and 0\.5025"):
        prunekit.prune(TwoConv().eval(), x, method="l1", target_macs=0.6, round_to=8)
    small = prunekit.prune(TwoConv().eval(), x, method="l1", target_macs=0.5, round_to=8)
    assert conv_widths(small) == {"conv1": 8, "conv2": 16}
    assert cost(small, (1, 4, 4)).macs == 3232


def test_round_to_too_wide_is_refused_or_explained() -> None:
    model = create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConfigError, match="leaves nothing to prune"):
        prunekit.prune(model, x, method="l1", ratio=0.5, round_to=64)
    with pytest.raises(ConfigError, match="layer1.0.conv1' has 16 output channels"):
        prunekit.prune(model, x, method="l1", ratios="layer1.0.conv1:0.5,layer3.0.conv1:0.5", round_to=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = prunekit.prune(model, x, method="l1", ratio=0.5, round_to=16)
    assert any("stay whole" in str(w.message) for w in caught)
    widths = conv_widths(small)
    assert (
        widths["layer1.0.conv1"] == 16 and widths["layer2.0.conv1"] == 16 and widths["layer3.0.conv1"] == 32
    )


def test_methods_with_their_own_widths_are_aligned_after() -> None:
    # Network slimming's global BN threshold picks any width; round_to rounds each pruned group down.
    model = create("resnet20").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) + 0.01)
    x = torch.randn(2, 3, 32, 32)
    plain = prunekit.prune(model, x, method="slimming", ratio=0.3)
    aligned = prunekit.prune(model, x, method="slimming", ratio=0.3, round_to=8)
    before, free, after = conv_widths(model), conv_widths(plain), conv_widths(aligned)
    assert any(w % 8 for n, w in free.items() if w != before[n]), "the unaligned run leaves odd widths"
    for name, w in after.items():
        if free[name] != before[name]:
            assert w == free[name] // 8 * 8, name
        else:
            assert w == before[name]


def test_measured_round_to_is_halved_to_fit_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.measure import latency_table

    monkeypatch.setattr(latency_table, "preferred_round_to", lambda *a, **k: 16)
    model = create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    # 16 measured, but the 16-wide stage could not be pruned at all: auto halves it to 8 for this model
    small = prunekit.prune(model, x, method="l1", ratio=0.5, round_to="auto")
    assert sorted(set(conv_widths(small).values())) == [8, 16, 32]
    # a round_to the user gives is kept as given (and explained where it cannot apply)
    assert Selection.of(ratio=0.5, round_to=16).round_to_for([16, 32]) == 16
    assert Selection.of(ratio=0.5).with_round_to(16, auto=True).round_to_for([16, 32, 64]) == 8


def test_cli_round_to_and_latency_flags(tmp_path, capsys) -> None:
    import json

    from conftest import SYNTHETIC_28
    from prunekit import model_file
    from prunekit.cli import main

    path = model_file.save(
        create("lenet5"),
        tmp_path / "dense.safetensors",
        info={"dataset": "synthetic", "data_options": {"shape": [1, 28, 28]}, "input_shape": [1, 28, 28]},
    )
    out = tmp_path / "run"
    argv = ["prune", str(path), "--method", "l1", "--ratio", "0.5", "--round-to", "8", *SYNTHETIC_28]
    assert main([*argv, "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # conv1 keeps 10 of 20 -> 8; conv2 25 of 50 -> 24; fc1 250 of 500 -> 248; fc2 is the output: 10
    after = summary["widths_after"]
    assert (after["conv1"], after["conv2"], after["fc1"], after["fc2"]) == (8, 24, 248, 10)
    assert summary["selection"] == "0.5,round_to=8"
    capsys.readouterr()
    bad = ["prune", str(path), "--method", "l1", *SYNTHETIC_28, "--out", str(tmp_path / "x")]
    assert main([*bad, "--target-latency", "1.5"]) == 2
    assert "target_latency=1.5 must be in (0, 1)" in capsys.readouterr().err
    assert main([*bad, "--round-to", "0"]) == 2
    assert "round_to must be a whole number ≥ 1, 'auto' or 'auto+depth'" in capsys.readouterr().err


def test_low_rank_ranks_are_aligned_and_the_budget_still_met() -> None:
    """A factorising method (TRP) gets ranks that are multiples of round_to, not silently unaligned ones;
    the budget search sees the aligned model."""
    import torch

    import prunekit
    from prunekit.measure import cost
    from prunekit.models import create
    from prunekit.surgery import LowRankConv2d

    torch.manual_seed(0)
    model = create("resnet20", shortcut="B").eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    options = {"rule": "energy", "threshold": 0.2}
    free = prunekit.prune(model, x[:1], method="trp", calib=x, **options)
    assert any(m.rank % 8 for m in free.modules() if isinstance(m, LowRankConv2d))  # unaligned without it
    aligned = prunekit.prune(model, x[:1], method="trp", calib=x, round_to=8, target_macs=0.5, **options)
    ranks = [m.rank for m in aligned.modules() if isinstance(m, LowRankConv2d)]
    assert ranks and all(r % 8 == 0 and r >= 8 for r in ranks)
    dense = cost(model, (3, 32, 32)).macs
    assert abs(cost(aligned, (3, 32, 32)).macs / dense - 0.5) <= 0.02 * 0.5


class ThreeConv(nn.Module):
    """1×4×4 input; widths (a, b, c) of conv1..conv3 cost 144a + 16ab + 16bc + 2c MACs: dense 10528."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))


def blocked_by_8(shape: object, batch: int, threads: int, device: str) -> float:
    """A fake layer timer for a CPU that computes output channels in blocks of 8: a conv costs as if its
    width were rounded up to a multiple of 8 (MACs/100 µs), plus 5 µs per layer."""
    import math

    from prunekit.measure.latency_table import LayerShape

    assert isinstance(shape, LayerShape)
    if shape.is_linear:
        return shape.macs() / 100 + 5
    return shape.macs() / shape.out_channels * math.ceil(shape.out_channels / 8) * 8 / 100 + 5


# ThreeConv at target_macs=0.6 with round_to=4 (band ±2 %: 6190–6442 MACs). The MAC search answers
# (12, 12, 12): 6360 MACs. Among the widths one multiple of 4 from it that stay in the band, the fake
# table (blocks of 8; + 20 µs for the four layers) predicts
#   (12, 12, 12): 23.04 + 30.72 + 30.72 + 0.24 + 20 = 104.72 µs   6360 MACs
#   ( 8, 16, 12): 11.52 + 20.48 + 30.72 + 0.24 + 20 =  82.96 µs?  no: conv3 (16 → 12) runs 16 wide,
#                 16·16·16/100 = 40.96, so 11.52 + 20.48 + 40.96 + 0.24 + 20 = 93.20 µs   6296 MACs
#   (16,  8, 16): 23.04 + 20.48 + 20.48 + 0.32 + 20 =  84.32 µs   6432 MACs
# (every other neighbour leaves the band), so the fastest is (16, 8, 16): widths the hardware's 8 divide.
THREE_FASTEST = (16, 8, 16)


def three_widths(model: nn.Module) -> tuple[int, ...]:
    return tuple(model.get_submodule(n).out_channels for n in ("conv1", "conv2", "conv3"))


def test_fastest_aligned_widths_at_a_mac_budget(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.measure import latency_table
    from prunekit.methods import latency_budget
    from prunekit.methods.budget import MacCounter, meet_budget
    from prunekit.methods.selection import Budget

    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(latency_budget, "_TABLES", {})
    monkeypatch.setattr(latency_table, "time_layer", blocked_by_8)
    model, x = ThreeConv().eval(), torch.randn(2, 1, 4, 4)
    base = {"conv1": 1.0, "conv2": 1.0, "conv3": 1.0}
    budget = Budget("target_macs", 0.6)

    def kept(ratios: dict[str, float]) -> tuple[int, ...]:
        return tuple(16 - pruned_count(ratios[n], 16, n) for n in ("conv1", "conv2", "conv3"))

    plain = meet_budget(model, x, budget, base, round_to=4)
    assert kept(plain.ratios) == (12, 12, 12) and plain.pruned_macs == 6360
    fast = meet_budget(model, x, budget, base, round_to=4, fastest=True)
    assert kept(fast.ratios) == THREE_FASTEST
    assert fast.pruned_macs == 6432 and fast.reached_fraction == pytest.approx(6432 / 10528)
    assert MacCounter(model, x).real(fast.ratios) == 6432
    # the table's own prediction of both, by hand above
    table = latency_budget.table_for(budget)
    shapes = latency_budget.layer_shapes
    for ratios, us in ((plain.ratios, 104.72), (fast.ratios, 84.32)):
        small = prunekit.prune(model, x, method="l1", rates=",".join(f"{n}:{r}" for n, r in ratios.items()))
        assert sum(table.lookup_many(shapes(small, x).values())) == pytest.approx(us)


def test_auto_states_a_mac_budget_at_the_latency_batch(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--round-to auto` with a MAC budget: the budget carries the run's latency batch and threads, which the
    # fastest-widths rule predicts at; a round_to the user gave leaves the MAC budget as it was.
    from prunekit.measure import latency_table
    from prunekit.methods.alignment import deployment_selection

    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(latency_table, "time_layer", blocked_by_8)
    auto = deployment_selection(Selection.of(target_macs=0.5), "auto", threads=2, batch_size=64)
    assert (auto.round_to, auto.round_to_auto) == (8, True)
    assert (auto.budget.kind, auto.budget.batch_size, auto.budget.threads) == ("target_macs", 64, 2)
    given = deployment_selection(Selection.of(target_macs=0.5), 8, threads=2, batch_size=64)
    assert (given.round_to_auto, given.budget.batch_size, given.budget.threads) == (False, 1, 1)
