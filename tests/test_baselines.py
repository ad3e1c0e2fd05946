"""L1-norm, FPGM, Network Slimming and random pruning on hand-made weights with hand-worked kept sets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import create_method, select_kept
from prunekit.methods.slimming import batchnorm_after

CALIB = torch.randn(2, 2, 4, 4)


def one_conv_net(filters: list[list[float]]) -> nn.Sequential:
    """A 1x1 conv whose filter j has the given input weights, then a head (so the conv is prunable)."""
    conv = nn.Conv2d(len(filters[0]), len(filters), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(filters).view(len(filters), -1, 1, 1))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(len(filters), 3))


# Filters as points in the plane: (0,0) (3,0) (0,4) (1,1).
POINTS = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0]]


def test_select_kept_floor_and_ties() -> None:
    assert select_kept(torch.tensor([3.0, 1.0, 2.0, 0.5]), 0.5) == [0, 2]
    # Equal scores: the lower index is removed first.
    assert select_kept(torch.ones(4), 0.5) == [2, 3]
    # int(0.7 * 12) = int(8.399...) = 8 removed.
    assert select_kept(torch.zeros(12), 0.7) == [8, 9, 10, 11]
    assert select_kept(torch.arange(5.0), 0.0) == [0, 1, 2, 3, 4]


def test_select_kept_empties_a_layer_only_at_exactly_one() -> None:
    # 1.0 is `selection.EMPTY`: a residual branch the round_to=auto search removes whole (the selection
    # language refuses ratios >= 1 from users); anything else outside [0, 1) is refused.
    assert select_kept(torch.ones(4), 1.0, "features.3") == []
    with pytest.raises(ConfigError, match=r"layer 'features.3': pruning ratio 1.5 is outside \[0, 1\)"):
        select_kept(torch.ones(4), 1.5, "features.3")
    with pytest.raises(PrunekitError, match="layer 'x': channel scores are not finite"):
        select_kept(torch.tensor([1.0, math.nan]), 0.5, "x")


def test_l1_prunes_smallest_absolute_sums() -> None:
    # L1 norms: 0, 3, 4, 2.
    model = one_conv_net(POINTS)
    method = create_method("l1", rates="0.5")
    assert method.score(model, "0", CALIB).tolist() == [0.0, 3.0, 4.0, 2.0]
    assert method.plan(model, CALIB) == {"0": [1, 2]}
    assert create_method("l1", rates=0.25).plan(model, CALIB) == {"0": [1, 2, 3]}


def test_fpgm_prunes_filters_nearest_the_geometric_median() -> None:
    model = one_conv_net(POINTS)
    r2, r5, r10 = math.sqrt(2), math.sqrt(5), math.sqrt(10)
    # Sum of distances to the other three filters: 8.41, 10.24, 12.16, 6.81.
    expected = [3 + 4 + r2, 3 + 5 + r5, 4 + 5 + r10, r2 + r5 + r10]
    method = create_method("fpgm", rates=0.25)
    assert method.score(model, "0", CALIB).tolist() == pytest.approx(expected)
    # (1,1) is nearest the median, although L1 would remove (0,0) first.
    assert method.plan(model, CALIB) == {"0": [0, 1, 2]}
    assert create_method("fpgm", rates=0.5).plan(model, CALIB) == {"0": [1, 2]}


def test_random_is_deterministic_per_seed() -> None:
    model = one_conv_net([[float(i), 1.0] for i in range(64)])
    plans = [create_method("random", rates=0.5, seed=seed).plan(model, CALIB)["0"] for seed in (0, 0, 1)]
    assert plans[0] == plans[1] != plans[2]
    assert all(len(kept) == 32 and kept == sorted(set(kept)) for kept in plans)


class Residual(nn.Module):
    """stem and body feed one residual add, so their output channels are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 1, bias=False)
        self.body = nn.Conv2d(3, 3, 1, bias=False)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head((h + self.body(h)).mean((2, 3)))


def test_coupled_group_scores_are_summed() -> None:
    model = Residual()
    with torch.no_grad():
        model.stem.weight.copy_(torch.tensor([1.0, 5.0, 2.0]).view(3, 1, 1, 1))
        model.body.weight.copy_(torch.tensor([[4.0, 0, 0], [0, 0, 0], [0, 0, 2.0]]).view(3, 3, 1, 1))
    calib = torch.ones(1, 1, 2, 2)
    # L1 per member: stem 1, 5, 2; body 4, 0, 2. Summed: 5, 5, 4 -> channel 2 goes from both.
    assert create_method("l1", rates=0.4).plan(model, calib) == {"stem": [0, 1], "body": [0, 1]}
    # Naming one member sets the group: int(0.5·3) = 1 channel, the same channel 2, goes from both.
    assert create_method("l1", rates="stem:0.5").plan(model, calib) == {"stem": [0, 1], "body": [0, 1]}
    with pytest.raises(
        ConfigError, match=r"layers stem, body share their output channels.*stem:0.5, body:0.3"
    ):
        create_method("l1", rates="stem:0.5,body:0.3").plan(model, calib)


# ---------------------------------------------------------------- network slimming


def slimming_net(gamma_a: list[float], gamma_b: list[float]) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(gamma_a))
        model[4].weight.copy_(torch.tensor(gamma_b))
    return model


GAMMA_A, GAMMA_B = [0.1, -0.2, 0.3, 0.4], [1.0, -0.05, 2.0, -3.0]


def test_slimming_penalty_is_weighted_sum_of_abs_gamma() -> None:
    model = slimming_net(GAMMA_A, GAMMA_B)
    penalty = create_method("slimming", penalty_weight=0.01).penalty(model)
    assert penalty is not None and penalty.item() == pytest.approx(0.01 * (1.0 + 6.05))
    penalty.backward()
    assert model[4].weight.grad.tolist() == pytest.approx([0.01, -0.01, 0.01, -0.01])
    assert create_method("slimming").options.penalty_weight == 1e-4


def test_slimming_global_threshold() -> None:
    # 4 of 8 go: |γ| 0.05 (b1), 0.1 (a0), 0.2 (a1), 0.3 (a2).
    plan = create_method("slimming", ratio=0.5).plan(slimming_net(GAMMA_A, GAMMA_B), CALIB)
    assert plan == {"0": [3], "3": [0, 2, 3]}


@pytest.mark.parametrize("limits", [{"min_channels": 2}, {"max_layer_ratio": 0.5}])
def test_slimming_per_layer_limits_bind(limits: dict[str, float]) -> None:
    # Layer a may lose only 2 channels; the 4th removal moves to b's next smallest, 1.0 (b0).
    plan = create_method("slimming", ratio=0.5, **limits).plan(slimming_net(GAMMA_A, GAMMA_B), CALIB)
    assert plan == {"0": [2, 3], "3": [2, 3]}


def test_slimming_refuses_what_the_limits_forbid() -> None:
    with pytest.raises(
        ConfigError, match=r"asks to remove 7 of 8 channels.*min_channels=2.*at most 4 can go"
    ):
        create_method("slimming", ratio=0.9, min_channels=2).plan(slimming_net(GAMMA_A, GAMMA_B), CALIB)


def test_slimming_layer_patterns() -> None:
    model = slimming_net(GAMMA_A, GAMMA_B)
    assert create_method("slimming", ratio=0.5, layers="3").plan(model, CALIB) == {"3": [2, 3]}
    with pytest.raises(ConfigError, match="slimming layer pattern 'conv\\*' matches no prunable layer"):
        create_method("slimming", layers="0,conv*").plan(model, CALIB)


class BatchNormFirst(nn.Module):
    """Registers the BN before the conv and feeds one conv straight into the head, without a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(2, 4, 1)
        self.bare = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bare(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def test_batchnorm_found_by_data_flow_not_registration_order() -> None:
    model = BatchNormFirst()
    assert batchnorm_after(model, CALIB[:1]) == {"conv": "bn"}
    # 'bare' has no BatchNorm after it: it keeps its channels and is named, the rest is slimmed.
    with pytest.warns(UserWarning, match="keeps every channel of 1 layer.*: bare; see the method details"):
        plan = create_method("slimming", ratio=0.5).plan(model, CALIB)
    assert set(plan) == {"conv"} and len(plan["conv"]) == 2
