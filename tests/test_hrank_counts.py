"""HRank's published FLOPs/params (specs/hrank.md §5.1) from its counter, the true pruned cost, and the
recipes of every published row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from prunekit.measure.conventions import hrank_flops, hrank_params
from prunekit.measure.hrank_counter import hrank_legacy_count, pruned_filters
from prunekit.methods.hrank import hrank_legacy_cost, true_pruned_cost
from prunekit.methods.hrank.layouts import PRESETS, compress_rates, layout_for
from prunekit.models import create

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "hrank").glob("*.yaml"))


def test_pruned_filters_is_the_floor_of_the_float_product() -> None:
    assert pruned_filters(0.7, 12) == 8  # 8.399...
    assert pruned_filters(0.6, 16) == 9  # 9.6 -> kept 7, the ResNet-56 preset's layer1 width
    assert pruned_filters(0.1, 16) == 1
    assert pruned_filters(0.0, 64) == 0


# (arch, compress_rate, mapping, exact FLOPs, exact params, published FLOPs, published params)
PUBLISHED = [
    ("resnet56", "0.0", "mask", 125_485_706, 848_954, "125.49M", "0.85M"),
    ("resnet56", "resnet56_hrank_93.17", "mask", 62_715_530, 489_359, "62.72M", "0.49M"),
    ("resnet110", "0.0", "mask", 252_887_690, 1_719_866, "252.89M", "1.72M"),
    ("densenet40", "0.0", "mask", 282_917_338, 1_040_578, "282.92M", "1.04M"),
    ("densenet40", "densenet40_hrank_94.24", "mask", 167_410_906, 664_630, "167.41M", "0.66M"),
    ("googlenet", "0.0", "mask", 1_521_756_170, 6_150_442, "1.52B", "6.15M"),
    ("googlenet", "googlenet_hrank_94.53", "mask", 686_015_498, 2_740_245, "0.69B", "2.74M"),
    ("googlenet", "googlenet_hrank_94.07", "flops_script", 450_061_322, 1_858_262, "0.45B", "1.86M"),
    ("resnet50", "0.0", "mask", 4_089_185_256, 25_503_912, "4.089B", "25.50M"),
    ("resnet50", "resnet50_hrank_71.98", "mask", 1_549_652_456, 13_773_764, "1.55B", "13.77M"),
    ("resnet50", "resnet50_hrank_71.98", "flops_script", 1_549_652_456, 13_773_764, "1.55B", "13.77M"),
]


def rounded(value: int, published: str) -> str:
    """`value` written like `published` ("62.72M", "0.45B"): same unit, same number of decimals."""
    number, unit = published[:-1], published[-1]
    decimals = len(number.partition(".")[2])
    return f"{value / {'M': 1e6, 'B': 1e9}[unit]:.{decimals}f}{unit}"


@pytest.mark.parametrize(("arch", "spec", "mapping", "flops", "params", "pub_flops", "pub_params"), PUBLISHED)
def test_legacy_counter_reproduces_published_numbers(
    arch: str, spec: str, mapping: str, flops: int, params: int, pub_flops: str, pub_params: str
) -> None:
    count = hrank_legacy_cost(arch, spec, mapping)  # type: ignore[arg-type]
    assert (count.flops, count.params) == (flops, params)
    assert (rounded(count.flops, pub_flops), rounded(count.params, pub_params)) == (pub_flops, pub_params)


def test_resnet110_config_differs_from_the_readme_in_the_last_digits() -> None:
    # README: 156.90M / 1.04M; the released counter on the released config gives 156.88M / 1.05M.
    count = hrank_legacy_cost("resnet110", "resnet110_hrank_94.23")
    assert (count.flops, count.params) == (156_884_618, 1_054_847)
    assert (rounded(count.flops, "156.90M"), rounded(count.params, "1.04M")) == ("156.88M", "1.05M")


def test_googlenet_mask_mapping_counts_c4_at_its_own_rate() -> None:
    # The masks prune c4 at rate[5] = 0.8, the FLOPs script at rate[6] = 0.85: 0.456B / 1.88M.
    count = hrank_legacy_cost("googlenet", "googlenet_hrank_94.07", "mask")
    assert (count.flops, count.params) == (455_683_082, 1_880_250)


def test_vgg_counts_do_not_reach_the_paper() -> None:
    # The counter gives 169.66M / 12.71M and 116.63M / 4.81M; the paper prints 145.61M / 2.51M and
    # 108.61M / 2.64M, which no reading of the released configs reproduces (specs/hrank.md §5.1).
    first = hrank_legacy_cost("vgg16_bn", "[0.7]*7+[0.1]*6")
    second = hrank_legacy_cost("vgg16_bn", "[0.95]+[0.5]*6+[0.9]*4+[0.8]*2")
    assert (first.flops, first.params) == (169_657_866, 12_712_516)
    assert (second.flops, second.params) == (116_629_002, 4_808_145)
    # The 13th rate is read but never used: conv13 keeps its 512 filters whatever it says.
    assert hrank_legacy_cost("vgg16_bn", "[0.0]*12+[0.9]") == hrank_legacy_cost("vgg16_bn", "0.0")


@pytest.mark.parametrize("arch", ["resnet56", "densenet40", "googlenet"])
def test_unpruned_legacy_count_matches_the_dense_hrank_counter(arch: str) -> None:
    model = create(arch)
    count = hrank_legacy_cost(arch, "0.0")
    assert (count.flops, count.params) == (hrank_flops(model), hrank_params(model))


def test_legacy_count_by_hand_on_a_two_conv_net() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 10, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(10, 4, 1), torch.nn.Flatten()
    )
    count = hrank_legacy_count(net, (3, 2, 2), {"0": 0.35})  # int(3.5) = 3 filters go, 7 stay
    # conv0: 3 in x 7 kept x 9 x 4 positions = 756 MACs, 7 x (27 + 1) = 196 params;
    # conv2 keeps its full 10 inputs: 10 x 4 x 1 x 4 = 160 MACs, 4 x 11 = 44 params.
    assert (count.flops, count.params) == (756 + 160, 196 + 44)


def test_densenet_transition_input_loses_the_blocks_pruned_filters() -> None:
    layout = layout_for(create("densenet40"))
    assert layout.legacy_inputs["trans1.conv1"] == ("conv1", *(f"dense1.{i}.conv1" for i in range(12)))
    # Pruning 6 of 12 filters of one dense1 conv removes, besides its own 6 x 180 x 9 x 1024 MACs,
    # 6 of trans1's 168 inputs: 6 x 168 x 1 x 1024 MACs of trans1.
    rates = [0.0] * 39
    rates[1] = 0.5  # dense1.0.conv1 (24 -> 12 channels in)
    base, pruned = hrank_legacy_cost("densenet40", "0.0"), hrank_legacy_cost("densenet40", rates)
    assert base.flops - pruned.flops == 6 * 24 * 9 * 1024 + 6 * 168 * 1024
    assert base.params - pruned.params == 6 * 24 * 9 + 6 * 168


def test_true_pruned_cost_of_the_resnet56_preset() -> None:
    # Physically pruned (inputs follow outputs, residual stages at their smallest rate): far below the
    # legacy 62.72M / 0.49M, which only credits removed output filters.
    real = true_pruned_cost("resnet56", "resnet56_hrank_93.17")
    assert (real.macs, real.params) == (52_873_734, 369_112)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_rates_parse_and_counts_match_published(path: Path) -> None:
    recipe = yaml.safe_load(path.read_text())
    arch, rates = recipe["model"]["arch"], recipe["method"]["options"]["rates"]
    published = recipe["published"]
    assert recipe["method"]["name"] == "hrank" and published["counter"] == "hrank_legacy"
    assert rates in PRESETS.values()
    with torch.device("meta"):
        layout = layout_for(create(arch))
    assert len(compress_rates(rates, layout)) == len(layout.entries)
    count = hrank_legacy_cost(arch, rates, published["mapping"])
    assert (count.flops, count.params) == (
        published["hrank_legacy"]["flops"],
        published["hrank_legacy"]["params"],
    )
    matches = (rounded(count.flops, published["flops"]), rounded(count.params, published["params"])) == (
        published["flops"],
        published["params"],
    )
    # VGG (paper not derivable) and ResNet-110 (README digits) say so in the recipe.
    assert matches == published["reproduced_by_counter"], published.get("note")


def test_every_published_config_has_a_recipe() -> None:
    used = {yaml.safe_load(p.read_text())["method"]["options"]["rates"] for p in RECIPES}
    assert used == set(PRESETS.values())
    assert len(RECIPES) == 8
