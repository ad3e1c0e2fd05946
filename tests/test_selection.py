"""The layer-selection language: parsing, mapping onto layers, error positions, and budget search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.methods.base import layer_ratios, prunable_groups
from prunekit.methods.budget import MacCounter, solve_budget
from prunekit.methods.selection import Budget, parse_selection, resolve_ratios
from prunekit.models import create

LAYERS = ["features.0", "features.3", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]


def caret_column(message: str) -> int:
    """Column of the caret, relative to the expression echoed on the line above it."""
    expression_line, caret_line = message.splitlines()[-2:]
    assert expression_line.startswith("  ") and caret_line.rstrip().endswith("^")
    return caret_line.index("^") - 2


def test_glob_rules_last_match_wins() -> None:
    ratios = resolve_ratios("*layer*.conv1:0.9,features.*:0.5", LAYERS)
    assert ratios == {
        "features.0": 0.5,
        "features.3": 0.5,
        "layer1.0.conv1": 0.9,
        "layer1.0.conv2": 0.0,
        "layer2.0.conv1": 0.9,
    }
    assert resolve_ratios("*:0.2, *conv1:0.7", LAYERS)["layer1.0.conv1"] == 0.7
    assert resolve_ratios("*conv1:0.7,*:0.2", LAYERS)["layer1.0.conv1"] == 0.2
    assert resolve_ratios("*layer[2-3]*:0.3", LAYERS)["layer2.0.conv1"] == 0.3


def test_unmatched_pattern_lists_layer_names() -> None:
    with pytest.raises(
        ConfigError, match=r"pattern '\*block\*' in .*matches no prunable layer.*features\.0, features\.3"
    ):
        resolve_ratios("features.*:0.1,*block*:0.5", LAYERS)


def test_hrank_list_expands_in_layer_order() -> None:
    selection = parse_selection("[0.1]+[0.60]*35+[0.0]*2")
    assert selection.sequence == (0.1,) + (0.6,) * 35 + (0.0, 0.0)
    names = [f"conv{i}" for i in range(38)]
    ratios = resolve_ratios(selection, names)
    assert (ratios["conv0"], ratios["conv1"], ratios["conv35"], ratios["conv36"], ratios["conv37"]) == (
        0.1,
        0.6,
        0.6,
        0.0,
        0.0,
    )


def test_list_accepts_integers_whitespace_and_bare_numbers() -> None:
    assert parse_selection(" [ 0 ] * 2 + 0.0 + .5*1 ").sequence == (0.0, 0.0, 0.0, 0.5)


def test_list_length_must_match_layer_count() -> None:
    with pytest.raises(
        ConfigError,
        match=r"has 4 entries but the model has 5 prunable layers; it needs exactly 5 "
        r"\(the first entry maps to 'features.0', the last to 'layer2.0.conv1'\)",
    ):
        resolve_ratios("[0.5]*4", LAYERS)


def test_single_float_is_uniform() -> None:
    assert resolve_ratios(0.25, LAYERS) == dict.fromkeys(LAYERS, 0.25)
    assert resolve_ratios("0.5", LAYERS) == dict.fromkeys(LAYERS, 0.5)
    # A bracketed single value is a one-entry list, not a uniform ratio.
    with pytest.raises(ConfigError, match="has 1 entries"):
        resolve_ratios("[0.5]", LAYERS)


@pytest.mark.parametrize(
    ("spec", "column", "what"),
    [
        ("[0.1]+[0.6]*x", 12, "repeat count after '\\*'"),
        ("[0.1+0.2", 4, "expected ']'"),
        ("[0.1] [0.2]", 6, "expected '\\+', ',' or the end"),
        ("0.1,,0.2", 4, "empty item between commas"),
        ("*conv1:0.5, features.*:abc", 23, "expected a ratio"),
        ("*conv1:1.0", 7, r"ratio 1 is outside \[0, 1\)"),
        ("[0.1]+[1.5]*2", 7, r"ratio 1.5 is outside \[0, 1\)"),
        ("target_flops=0.5", 0, "unknown budget 'target_flops'; valid budgets: target_macs, speedup"),
        ("target_macs=1.2", 12, r"must be in \(0, 1\)"),
        ("speedup=0.5", 8, "must be > 1"),
        ("*a:0.1,0.3", 7, "cannot be combined"),
        ("target_macs=0.5,speedup=2", 16, "more than one budget"),
    ],
)
def test_syntax_errors_point_at_the_fault(spec: str, column: int, what: str) -> None:
    with pytest.raises(ConfigError, match=what) as info:
        parse_selection(spec)
    message = str(info.value)
    assert message.splitlines()[-2] == f"  {spec}"
    assert caret_column(message) == column


def test_budget_items() -> None:
    assert parse_selection("target_macs=0.4").budget == Budget("target_macs", 0.4)
    speedup = parse_selection("*conv1:0.5, speedup=4")
    assert speedup.budget is not None and speedup.budget.fraction == 0.25
    assert speedup.rules == (("*conv1", 0.5),)
    # A budget alone scales a uniform shape.
    assert resolve_ratios("speedup=2", LAYERS) == dict.fromkeys(LAYERS, 1.0)


# ---------------------------------------------------------------- budgets


def conv_net(widths: tuple[int, ...] = (16, 32, 32)) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = 3
    for width in widths:
        layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        previous = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, 10))


def test_mac_counter_by_hand() -> None:
    counter = MacCounter(conv_net(), torch.randn(1, 3, 8, 8))
    assert counter.groups == [("0",), ("3",), ("6",)]
    dense = 16 * 3 * 9 * 64 + 32 * 16 * 9 * 64 + 32 * 32 * 9 * 64 + 32 * 10
    assert counter.dense == dense == 912_704
    half = dict.fromkeys(["0", "3", "6"], 0.5)
    expected = 8 * 3 * 9 * 64 + 16 * 8 * 9 * 64 + 16 * 16 * 9 * 64 + 16 * 10
    assert counter.analytic(half) == counter.real(half) == expected
    # int(0.7 * 16) = 11 removed from the first conv only.
    assert counter.analytic({"0": 0.7}) == 5 * 3 * 9 * 64 + 32 * 5 * 9 * 64 + 32 * 32 * 9 * 64 + 320


def test_uniform_budget_within_one_percent() -> None:
    model, example = conv_net((32, 64, 64)), torch.randn(1, 3, 8, 8)
    groups = prunable_groups(model, example)
    ratios, result = layer_ratios(model, example, groups, parse_selection("target_macs=0.5"))
    assert result is not None
    assert abs(result.reached_fraction - 0.5) <= 0.005
    assert result.pruned_macs == MacCounter(model, example).real(ratios)
    assert result.reached_fraction == result.pruned_macs / result.dense_macs
    assert len(set(ratios.values())) == 1 and ratios["0"] == pytest.approx(result.ratio)


def test_pattern_budget_on_a_residual_network_is_met_on_the_pruned_model() -> None:
    model, example = create("resnet20"), torch.randn(1, 3, 32, 32)
    groups = prunable_groups(model, example)
    selection = parse_selection("*layer*.conv1:0.5, target_macs=0.69")
    ratios, result = layer_ratios(model, example, groups, selection)
    assert result is not None and abs(result.reached_fraction - 0.69) <= 0.0069
    assert result.dense_macs == 40_551_040  # 40.55M: the ResNet-20 MACs of the papers
    assert result.pruned_macs == MacCounter(model, example).real(ratios)
    block_conv1 = {name for name in ratios if name.startswith("layer") and name.endswith("conv1")}
    assert len(block_conv1) == 9
    assert all(ratios[name] == pytest.approx(result.ratio * 0.5) for name in block_conv1)
    assert {ratio for name, ratio in ratios.items() if name not in block_conv1} == {0.0}


def test_unreachable_budget_names_the_closest_value() -> None:
    model, example = conv_net(), torch.randn(1, 3, 8, 8)
    groups = prunable_groups(model, example)
    # Only the first conv: even at the 0.95 maximum most MACs remain.
    floor = MacCounter(model, example).analytic({"0": 0.95}) / 912_704
    with pytest.raises(ConfigError, match=rf"out of reach.*keeps {floor:.4f} of the dense MACs"):
        layer_ratios(model, example, groups, parse_selection("0:0.5,target_macs=0.5"))


def test_budget_between_width_steps_reports_both_neighbours() -> None:
    # Two channels: the only reachable fractions are 1.0 and 0.5.
    with pytest.raises(ConfigError, match=r"closest reachable MAC fractions are 1.0000 and 0.5000"):
        solve_budget(Budget("target_macs", 0.75), {"a": 1.0}, lambda r: 2 - int(r["a"] * 2))


def test_budget_between_uniform_steps_is_refined_group_by_group() -> None:
    # Scaling the nine block conv1's together jumps from 0.728 to 0.691 of the MACs; 0.70 lies between.
    model, example = create("resnet20"), torch.randn(1, 3, 32, 32)
    groups = prunable_groups(model, example)
    ratios, result = layer_ratios(
        model, example, groups, parse_selection("*layer*.conv1:0.5, target_macs=0.70")
    )
    assert result is not None and abs(result.reached_fraction - 0.70) <= 0.007
    assert result.pruned_macs == MacCounter(model, example).real(ratios)
    for group in groups:  # coupled layers still share one ratio; unselected layers stay whole
        assert len({ratios[name] for name in group.members}) == 1
    assert {ratio for name, ratio in ratios.items() if not name.endswith("conv1") or "layer" not in name} == {
        0.0
    }


def test_budget_on_lenet5_between_conv2_steps_is_met() -> None:
    # Uniform ratios jump from 0.3153 to 0.2819 of the MACs (one conv2 channel); fc1 steps fill the gap.
    model, example = create("lenet5"), torch.randn(1, 1, 28, 28)
    ratios, result = layer_ratios(
        model, example, prunable_groups(model, example), parse_selection("target_macs=0.3")
    )
    assert result is not None and abs(result.reached_fraction - 0.3) <= 0.003
    assert result.pruned_macs == MacCounter(model, example).real(ratios)


def test_a_glob_naming_part_of_a_coupled_group_sets_the_whole_group() -> None:
    # "*layer1*" names layer1's conv2s but not the stem conv1 whose channels they share through the adds.
    model, example = create("resnet20"), torch.randn(1, 3, 32, 32)
    groups = prunable_groups(model, example)
    ratios, _ = layer_ratios(model, example, groups, parse_selection("*layer1*:0.5"))
    stage1 = next(g for g in groups if "conv1" in g.members)
    assert {ratios[m] for m in stage1.members} == {0.5}
    assert ratios["layer2.0.conv1"] == 0.0  # not named, not coupled: untouched
    with pytest.raises(ConfigError, match="share their output channels"):
        create_method("l1", rates="conv1:0.3,*layer1*conv2:0.5").plan(model, example)
