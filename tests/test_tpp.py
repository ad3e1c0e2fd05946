"""TPP and GReg-1/2 (specs/tpp.md): the penalty terms against hand-computed values, λ over the stage, the
picks and counts of §1, name matching, and refused inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.methods.tpp import Ramp, gram_term, pick, tpp_count
from prunekit.models import create

# Three 2-weight filters (1×1 conv, 2 inputs); mean|w| = 1, 0.25, 1, so the middle one is removed.
W = torch.tensor([[1.0, 1.0], [0.5, 0.0], [0.0, 2.0]])


def test_gram_term_value_and_gradient_by_hand() -> None:
    # W = [[1,0],[1,1],[0,2]]: G = [[1,1,0],[1,2,2],[0,2,4]]. Filter 1 removed: its row and column count,
    # (0,1) (1,0) (1,1) (1,2) (2,1) = 1, 1, 2, 2, 2 → squares 1+1+4+4+4 = 14, over N² = 9.
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]).reshape(3, 2, 1, 1).requires_grad_()
    removed = torch.tensor([False, True, False])
    loss = gram_term(w, removed)
    assert loss.item() == pytest.approx(14 / 9)
    loss.backward()
    # ∂/∂w_k = 4/N² Σ_{j: k or j removed} (w_k·w_j) w_j: kept 0 → 1·w1; removed 1 → 1·w0 + 2·w1 + 2·w2;
    # kept 2 → 2·w1.
    expected = torch.tensor([[1.0, 1.0], [3.0, 6.0], [2.0, 2.0]]) * 4 / 9
    torch.testing.assert_close(w.grad.flatten(1), expected)
    # The released code's form: mean((G − T)²), T = stop-gradient G with removed rows/columns zeroed.
    flat = w.detach().flatten(1)
    g = flat @ flat.T
    t = g.clone()
    t[1, :] = 0
    t[:, 1] = 0
    assert ((g - t) ** 2).mean().item() == pytest.approx(loss.item())


class Tiny(nn.Module):
    """conv (1×1, 2 → 3, bias) → BN → ReLU → pool → linear: one prunable layer with a BN after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(W.reshape(3, 2, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.3, 1.0, -0.2]))
            self.bn.weight.copy_(torch.tensor([1.5, 2.0, 0.7]))
            self.bn.bias.copy_(torch.tensor([0.1, -1.0, 0.4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


X = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
FAST = {"update_reg_interval": 1, "reg_granularity": 0.5, "stabilize_reg_interval": 2, "zero_out_interval": 1}


def _prepared(name: str, **options: object):
    method = create_method(name, "conv:0.3", **options)
    model = Tiny()
    method.prepare(model, X)
    return method, model


def test_tpp_penalty_gram_bn_and_l2_terms_by_hand() -> None:
    method, model = _prepared("tpp", **FAST)
    assert method.removed == [[1]]  # ⌈0.3·3⌉ = 1 filter, the smallest mean|w|
    assert method.penalty(model, 1) is None  # λ(t=0) = 0
    method.after_step(model, 1)  # the update of iteration 1: λ = Δ·t/K_u = 0.5
    # G entries touching filter 1: w0·w1 = 0.5 (twice), w1·w1 = 0.25, w1·w2 = 0 → (0.25+0.25+0.0625)/9 = 1/16.
    # ½(‖w1‖² + b1² + γ1² + β1²) = ½(0.25 + 1 + 4 + 1) = 3.125.
    assert method.penalty(model, 2).item() == pytest.approx(1000 * 0.5 / 16 + 0.5 * 3.125)
    no_bn, model = _prepared("tpp", **FAST, bn_reg=False)
    no_bn.after_step(model, 1)
    assert no_bn.penalty(model, 2).item() == pytest.approx(1000 * 0.5 / 16 + 0.5 * 0.5 * 1.25)
    no_l2, model = _prepared("tpp", **FAST, l2_reg=False)
    no_l2.after_step(model, 1)
    assert no_l2.penalty(model, 2).item() == pytest.approx(1000 * 0.5 / 16 + 0.5 * 0.5 * 5.0)
    weaker, model = _prepared("tpp", **FAST, lw_opp=10.0)
    weaker.after_step(model, 1)
    assert weaker.penalty(model, 2).item() == pytest.approx(10 * 0.5 / 16 + 0.5 * 3.125)


def test_bn_term_gradient_reaches_only_the_removed_channel() -> None:
    method, model = _prepared("tpp", **FAST, lw_opp=1.0)
    method.after_step(model, 1)
    method.penalty(model, 2).backward()
    # d/dγ of λ/2 γ1² = λ γ1 = 0.5 · 2 on channel 1 only; β likewise.
    torch.testing.assert_close(model.bn.weight.grad, torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(model.bn.bias.grad, torch.tensor([0.0, -0.5, 0.0]))
    assert model.fc.weight.grad is None


def test_greg1_penalises_removed_weights_only() -> None:
    method, model = _prepared("greg1", update_reg_interval=1, reg_granularity=0.5, stabilize_reg_interval=2)
    # GReg adds Δ at every update: λ = 0.5 after t = 0, 1.0 after t = 1.
    assert method.penalty(model, 1).item() == pytest.approx(0.5 * 0.5 * 0.25)
    method.after_step(model, 1)
    method.penalty(model, 2).backward()
    torch.testing.assert_close(model.conv.weight.grad.flatten(1), torch.tensor([[0, 0], [0.5, 0], [0, 0.0]]))
    assert model.conv.bias.grad is None and model.bn.weight.grad is None


def _lambdas(method, model, steps: int) -> list[float]:
    """λ used by the penalty of steps 1..steps, driving the hooks as `fit` does."""
    seen = []
    for s in range(1, steps + 1):
        seen.append(method.lam(0))
        method.after_step(model, s)
    return seen


def test_tpp_lambda_staircase_hold_zero_out_and_stage_length() -> None:
    options = {"update_reg_interval": 2, "reg_granularity": 0.25, "stabilize_reg_interval": 3}
    method, model = _prepared("tpp", **options, zero_out_interval=1)
    # λ = 0.25·⌊t/2⌋ reaches 1 at t = 8 (t_stab); then 3 steps held; removal after iteration 11.
    assert method.sparsify_steps(100) == 12
    kept_before = model.conv.weight.detach()[[0, 2]].clone()
    seen = []
    for s in range(1, 13):
        seen.append(method.lam(0))
        method.after_step(model, s)
        if s == 9:  # iteration 8 = t_stab: the conv (learnable layer 0) is zeroed from t − t_stab ≥ 1 on
            assert model.conv.weight[1].abs().sum() > 0
        if s == 10:
            assert model.conv.weight[1].abs().sum() == 0
            assert model.bn.weight[1] == 0 and model.bn.bias[1] == 0
            assert model.conv.bias[1] == 1.0  # biases and running stats are left alone
    assert seen == [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert method.clock.t_stab == 8
    torch.testing.assert_close(model.conv.weight.detach()[[0, 2]], kept_before)
    # The paper's defaults: CIFAR (K_u 10, K_s 10,000) and ImageNet (K_u 5, K_s 40,000).
    cifar = create_method("tpp", "0.5", update_reg_interval=10, stabilize_reg_interval=10000)
    assert cifar.sparsify_steps(391) == 110_001
    assert create_method("tpp", "0.5").sparsify_steps(5005) == 90_001


def test_greg_lambda_increments_and_greg2_picks_after_regularising() -> None:
    method, model = _prepared("greg1", update_reg_interval=2, reg_granularity=0.25, stabilize_reg_interval=3)
    # λ = 0.25·(updates), growth ends when λ > 1: the fifth update, at t = 8 (λ = 1.25).
    assert _lambdas(method, model, 10) == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.25, 1.25]
    assert method.clock.t_stab == 8 and method.sparsify_steps(1) == 12
    # GReg-2: uniform R grows 0.1 per update up to 0.2 (2 updates), the pick, then +0.5 past 1 on the removed.
    opts = {
        "update_reg_interval": 1,
        "reg_granularity": 0.5,
        "reg_granularity_pick": 0.1,
        "reg_upper_limit_pick": 0.2,
        "stabilize_reg_interval": 2,
        "stop_on_mag_ratio": False,
    }
    greg2, model = _prepared("greg2", **opts)
    assert not greg2.picked
    with torch.no_grad():
        model.conv.weight[2] = 0.01  # after "regularising", filter 2 is now the smallest
    greg2.after_step(model, 1)  # the second uniform update reaches 0.2: pick on the current weights
    assert greg2.removed == [[2]]
    coefficients = greg2.coefficients(greg2.layers[0], torch.device("cpu"))
    torch.testing.assert_close(coefficients, torch.tensor([-1e-4, -1e-4, 0.2]))
    # Removed: 0.2 → 0.7 → 1.2 (> 1 after two more updates, t = 3); stage = t_stab 3 + 2 held + 1.
    assert greg2.sparsify_steps(1) == 6
    seen = []
    for s in (2, 3, 4):
        seen.append(greg2.lam(0))
        greg2.after_step(model, s)
    assert seen == [0.2, pytest.approx(0.7), pytest.approx(1.2)]
    assert greg2.clock.t_stab == 3


def test_magnitude_ratio_stop() -> None:
    # mean|w| kept / removed = 1 / 0.25 = 4 on the dense weights: a limit of 3 stops the growth at t = 0.
    method, model = _prepared("tpp", **FAST, stop_on_mag_ratio=True, mag_ratio_limit=3.0)
    assert method.clock.t_stab == 0 and method.lam(0) == 0.5  # paper-era λ: Δ after the first update
    method, model = _prepared("tpp", **FAST, stop_on_mag_ratio=True, mag_ratio_limit=5.0)
    assert method.clock.t_stab is None


def test_ramp_counts_are_exact() -> None:
    assert Ramp(1e-4, 1.0).updates() == 10_001  # λ = 0 … 1 in 10,000 steps of 1e-4
    assert Ramp(1e-4, 1.0, first=1e-4, strict=True).updates() == 10_001  # ends at 1.0001
    assert Ramp(1e-5, 1e-2, first=1e-5).updates() == 1_000


# ---------------------------------------------------------------- selection (§1)


def test_counts_of_the_kept_filter_table() -> None:
    table = {  # PR: ResNet-56 kept at 16/32/64, VGG kept at 64/128/256/512 (specs/tpp.md §1.7)
        0.1: ((14, 28, 57), (57, 115, 230, 460)),
        0.3: ((11, 22, 44), (44, 89, 179, 358)),
        0.5: ((8, 16, 32), (32, 64, 128, 256)),
        0.7: ((4, 9, 19), (19, 38, 76, 153)),
        0.9: ((1, 3, 6), (6, 12, 25, 51)),
        0.925: ((1, 2, 4), (4, 9, 19, 38)),
        0.95: ((1, 1, 3), (3, 6, 12, 25)),
    }
    for pr, (resnet, vgg) in table.items():
        assert tuple(n - tpp_count(pr, n) for n in (16, 32, 64)) == resnet, pr
        assert tuple(n - tpp_count(pr, n) for n in (64, 128, 256, 512)) == vgg, pr
    assert tpp_count(0.99, 16) == 15 and tpp_count(0.99, 16, cap=None) == 15
    assert tpp_count(0.999, 400) == 398 and tpp_count(0.999, 400, cap=None) == 399  # ⌊0.995·N⌋ vs N − 1


def _widths(method, model: nn.Module) -> dict[str, int]:
    return {name: len(kept) for name, kept in method.plan(model, torch.randn(2, 3, 32, 32)).items()}


def test_stage_pr_pattern_hits_block_conv1_only_and_tolerates_module_prefix() -> None:
    model = create("resnet56")
    x = torch.randn(2, 3, 32, 32)
    method = create_method("tpp", "*layer*.conv1:0.9")
    method.prepare(model, x)
    widths = _widths(method, model)
    assert len(widths) == 27 and all(n.startswith("layer") and n.endswith(".conv1") for n in widths)
    assert {widths["layer1.0.conv1"], widths["layer2.4.conv1"], widths["layer3.8.conv1"]} == {1, 3, 6}
    assert [widths[f"layer{s}.0.conv1"] for s in (1, 2, 3)] == [1, 3, 6]
    # Last match wins; a DataParallel-style `module.` prefix is accepted.
    method = create_method("tpp", "*layer*.conv1:0.5,module.layer3.*.conv1:0.3")
    method.prepare(model, x)
    widths = _widths(method, model)
    assert widths["layer1.2.conv1"] == 8 and widths["layer3.2.conv1"] == 44


def test_skip_layers_and_the_vgg_pattern() -> None:
    model = create("vgg19_bn")
    x = torch.randn(2, 3, 32, 32)
    method = create_method("tpp", "*features*:0.7", skip_layers="[*features.0]")
    method.prepare(model, x)
    widths = _widths(method, model)
    assert "features.0" not in widths and widths["features.3"] == 19 and widths["features.40"] == 153
    assert len(widths) == 15


def test_picks_min_max_rand() -> None:
    scores = torch.tensor([0.3, 0.1, 0.5, 0.1, 0.9])
    assert pick(scores, 2, "min") == [1, 3]
    assert pick(scores, 2, "max") == [2, 4]
    first = pick(scores, 2, "rand", torch.Generator().manual_seed(42))
    assert first == pick(scores, 2, "rand", torch.Generator().manual_seed(42)) and len(first) == 2


# ---------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    ("selection", "options", "message"),
    [
        ("*nothing*:0.5", {}, "matches no prunable layer"),
        ("fc:0.5", {}, "classifier"),
        ("*:0.5", {}, "classifier"),
        ("*conv1:0.5", {"skip_layers": "*nothing*"}, "skip_layers pattern"),
    ],
)
def test_bad_selections_are_reported(selection: str, options: dict, message: str) -> None:
    method = create_method("tpp", selection, **options)
    with pytest.raises(ConfigError, match=message):
        method.prepare(create("resnet20"), torch.randn(2, 3, 32, 32))


def test_classifier_pattern_is_accepted_when_skipped() -> None:
    method = create_method("tpp", "*:0.5", skip_layers="fc")
    method.prepare(create("resnet20"), torch.randn(2, 3, 32, 32))
    assert method.removed


@pytest.mark.parametrize(
    ("selection", "options"),
    [
        ("*conv1:1.0", {}),
        ("*conv1:0.5", {"lw_opp": 0}),
        ("*conv1:0.5", {"lw_opp": -1}),
        ("*conv1:0.5", {"update_reg_interval": 0}),
        ("*conv1:0.5", {"stabilize_reg_interval": -5}),
        ("*conv1:0.5", {"zero_out_interval": 0}),
        ("*conv1:0.5", {"reg_granularity": 0}),
        ("*conv1:0.5", {"seed": 7}),  # seed without pick=rand
    ],
)
def test_bad_values_are_refused_before_any_work(selection: str, options: dict) -> None:
    with pytest.raises(ConfigError):
        create_method("tpp", selection, **options)


def test_hold_too_short_for_the_zero_out_and_hooks_before_prepare_are_refused() -> None:
    method = create_method("tpp", "*conv1:0.5", stabilize_reg_interval=100)  # 20 layers × 100 > 100
    with pytest.raises(ConfigError, match="zero-out"):
        method.prepare(create("resnet20"), torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="prepare"):
        create_method("tpp").penalty(create("resnet20"), 1)


def test_pruning_without_the_stage_warns_and_removes_the_picked_filters() -> None:
    method, model = _prepared("tpp", **FAST)
    with pytest.warns(UserWarning, match="without the regularised stage"):
        pruned = method.prune(model, X)
    assert pruned.model.conv.out_channels == 2
    with torch.no_grad():
        torch.testing.assert_close(pruned.model.conv.weight.flatten(1), W[[0, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.after_step(model, 1)
        method.prune(model, X)  # a stage ran: no warning


def test_bottleneck_patterns_hit_conv1_and_conv2_never_conv3_or_downsample() -> None:
    model = create("resnet50")
    x = torch.randn(1, 3, 64, 64)
    method = create_method("tpp", "*layer[1-3]*conv[1-2]:0.3,*layer4*conv[1-2]:0.14")
    method.prepare(model, x)
    widths = {name: len(kept) for name, kept in method.plan(model, x).items()}
    assert len(widths) == 2 * 16  # conv1 and conv2 of the 16 bottlenecks
    assert not any(name.endswith(("conv3", "downsample.0")) or name == "conv1" for name in widths)
    # Kept bottleneck widths of specs/tpp.md §3.4's 1.49x row: 44/89/179 (0.3) and 440 (0.14).
    assert [widths[f"layer{s}.0.conv1"] for s in (1, 2, 3, 4)] == [44, 89, 179, 440]
    assert widths["layer4.2.conv2"] == 440
