"""TRP and the nuclear baseline (specs/trp.md): rank rules, projection, sub-gradient, hook timing, layer
rule, decomposition and its cost, bad input. Hand-computed values throughout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit import model_file
from prunekit.errors import ConfigError, PrunekitError
from prunekit.measure import cost
from prunekit.measure.conventions import counter, thop_params, trp_flops
from prunekit.methods import create_method
from prunekit.methods.trp import energy_ranks, project, value_ranks
from prunekit.models import create
from prunekit.surgery import LowRankConv2d
from prunekit.surgery.lowrank import lowrank_macs, to_matrix

S2 = math.sqrt(0.5)


def _net() -> nn.Sequential:
    """stem 3×3, a stride-1 3×3, a stride-2 3×3 and a 1×1: the default rule trains `1` and `2` and
    decomposes `1` only (spec §1)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(8, 4, 1),
    )


# ---------------------------------------------------------------- exactness at full rank


@pytest.mark.parametrize("scheme", ["NC", "VH", "ND"])
@pytest.mark.parametrize(
    "geometry",
    [
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": (3, 5), "stride": (2, 1), "padding": (2, 1), "dilation": (2, 1)},
        {"kernel_size": 3, "stride": 1, "padding": 2, "dilation": 2},
        {"kernel_size": 3, "stride": 2, "padding": 0},
    ],
)
def test_full_rank_is_exact_with_stride_padding_and_dilation(scheme: str, geometry: dict) -> None:
    conv = nn.Conv2d(3, 5, bias=True, **geometry).double()
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    n, c, kh, kw = conv.weight.shape
    full = {"NC": min(n, c * kh * kw), "VH": min(c * kh, n * kw), "ND": min(c, kh * kw)}[scheme]
    low = LowRankConv2d.from_conv(conv, scheme, full)
    torch.testing.assert_close(low(x), conv(x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- rank rules


def test_rank_rules_on_hand_made_singular_values() -> None:
    # σ² = 9, 4, 1 → cumulative shares 9/14 = 0.643, 13/14 = 0.929, 1; row two is all zero.
    sigma = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    assert [energy_ranks(sigma, t).tolist() for t in (0.5, 9 / 14, 0.65, 0.9, 0.93, 1.0)] == [
        [1, 1], [1, 1], [2, 1], [2, 1], [3, 1], [3, 3]
    ]  # fmt: skip
    assert [value_ranks(sigma[:1], t).tolist() for t in (0.0, 1.0, 1.5, 3.0, 5.0)] == [
        [3], [3], [2], [1], [1]
    ]  # fmt: skip
    # The release's ValueThreshold returns 0 when every σ is below t; a rank-0 layer is never built.
    assert value_ranks(sigma[1:], 0.05).tolist() == [1]


# ---------------------------------------------------------------- projection and sub-gradient


def _known(model: nn.Sequential) -> torch.Tensor:
    """Puts M = U diag(3, 1) with U = [[1, 1], [1, -1]]/√2 (V = I) in the 1×1 conv `model[1]`."""
    m = torch.tensor([[3 * S2, S2], [3 * S2, -S2]])
    with torch.no_grad():
        model[1].weight.copy_(m[:, :, None, None])
    return m


def _pair() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.Conv2d(2, 2, 1, bias=False))


def test_nuclear_subgradient_and_projection_on_a_known_matrix() -> None:
    model = _pair()
    m = _known(model)
    # keep 0.85: σ1 alone holds 9/10 of σ² → r = 1, U_1 V_1ᵀ = [[1, 0], [1, 0]]/√2.
    (p,) = project([model[1].weight], "NC", 0.85)
    assert p.rank == 1
    torch.testing.assert_close(p.subgradient[:, :, 0, 0], torch.tensor([[S2, 0.0], [S2, 0.0]]))
    torch.testing.assert_close(p.weight[:, :, 0, 0], torch.tensor([[3 * S2, 0.0], [3 * S2, 0.0]]))
    # keep 1: the full U Vᵀ = U, whose spectral norm is 1 (the sub-gradient of ‖M‖_*).
    (q,) = project([model[1].weight], "NC", 1.0)
    torch.testing.assert_close(q.subgradient[:, :, 0, 0], torch.tensor([[S2, S2], [S2, -S2]]))
    torch.testing.assert_close(q.weight[:, :, 0, 0], m)
    assert torch.linalg.matrix_norm(q.subgradient[:, :, 0, 0], ord=2).item() == pytest.approx(1.0)


def test_nd_projection_truncates_each_filter_at_its_own_rank() -> None:
    # Filter 0's (c, kh·kw) matrix diag(3, 1): σ² shares 0.9, 1 → rank 1 at keep 0.85, truncated to
    # diag(3, 0). Filter 1's diag(2, 2): shares 0.5, 1 → rank 2, unchanged. The common rank is 2.
    weight = torch.zeros(2, 2, 1, 2)
    weight[0, 0, 0, 0], weight[0, 1, 0, 1] = 3.0, 1.0
    weight[1, 0, 0, 0], weight[1, 1, 0, 1] = 2.0, 2.0
    (p,) = project([weight], "ND", 0.85)
    assert p.rank == 2
    expected = weight.clone()
    expected[0, 1, 0, 1] = 0.0
    torch.testing.assert_close(p.weight, expected)
    # the sub-gradient U_r V_rᵀ per filter: diag(1, 0) and diag(1, 1)
    torch.testing.assert_close(
        p.subgradient, torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])
    )


def test_nd_decomposition_takes_the_largest_filter_rank_and_saves(tmp_path) -> None:
    model = create("resnet20", shortcut="B", in_channels=1).eval()
    x = torch.randn(4, 1, 28, 28)
    method = create_method("trp", scheme="ND", rule="energy", threshold=0.15)  # the release's final rule
    conv = model.get_submodule("layer2.1.conv1")
    sigma = torch.linalg.svdvals(conv.weight.detach().double().reshape(32, 32, 9))  # per filter
    expected = int(energy_ranks(sigma, 0.85).max())
    small = prunekit.prune(model, x[:1], method="trp", calib=x, scheme="ND", rule="energy", threshold=0.15)
    low = small.get_submodule("layer2.1.conv1")
    assert isinstance(low, LowRankConv2d) and (low.scheme, low.rank) == ("ND", expected)
    assert (low.first.out_channels, low.second.groups) == (32 * expected, 32)
    assert method.options.scheme == "ND"
    model_file.save(small.eval(), tmp_path / "nd.safetensors")
    again = model_file.load(tmp_path / "nd.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x), rtol=0, atol=0)


def test_projection_keeps_each_weight_at_its_energy_rank() -> None:
    model = create("resnet20", shortcut="B")
    method = create_method("trp", energy=0.6)
    layers = method.trained_layers(model)
    before = {name: to_matrix(m.weight.detach().double(), "NC") for name, m in layers}
    method.after_step(model, 1)
    for name, m in layers:
        sigma = torch.linalg.svdvals(before[name])
        r = int(energy_ranks(sigma[None], 0.6))
        assert 1 <= r < len(sigma)
        assert torch.linalg.matrix_rank(to_matrix(m.weight.detach().double(), "NC"), rtol=1e-5) == r


def test_the_gradient_edit_and_the_projection_happen_every_mth_step() -> None:
    model = _pair()
    m = _known(model)
    method = create_method("trp", layers="1", period=3, energy=0.85, nuclear_weight=0.5)
    assert [name for name, _ in method.trained_layers(model)] == ["1"]
    grad = torch.ones(2, 2, 1, 1)
    edited, projected = [], []
    for step in range(1, 8):
        model[1].weight.grad = grad.clone()
        method.after_backward(model, step)
        edited.append(not torch.equal(model[1].weight.grad, grad))
        w = model[1].weight.detach().clone()
        method.after_step(model, step)
        projected.append(not torch.equal(model[1].weight, w))
        with torch.no_grad():  # an SGD step would bring the weight back to full rank
            model[1].weight.copy_(m[:, :, None, None])
    # TRP steps 1, 4, 7 get λ·U_r V_rᵀ; the projections after steps 3 and 6 prepare steps 4 and 7.
    assert edited == [True, False, False, True, False, False, True]
    assert projected == [False, False, True, False, False, True, False]
    # grad + 0.5 · [[1, 0], [1, 0]]/√2 (r = 1 at energy 0.85), from the projection's own SVD.
    expected = grad[:, :, 0, 0] + 0.5 * torch.tensor([[S2, 0.0], [S2, 0.0]])
    torch.testing.assert_close(model[1].weight.grad[:, :, 0, 0], expected)


def test_nuclear_edits_the_gradient_and_never_projects() -> None:
    model = _pair()
    _known(model)
    method = create_method("nuclear", layers="1", energy=1.0, nuclear_weight=0.1)
    model[1].weight.grad = torch.zeros(2, 2, 1, 1)
    w = model[1].weight.detach().clone()
    method.after_backward(model, 1)
    method.after_step(model, 1)
    assert torch.equal(model[1].weight, w)
    torch.testing.assert_close(model[1].weight.grad[:, :, 0, 0], 0.1 * torch.tensor([[S2, S2], [S2, -S2]]))


# ---------------------------------------------------------------- layers


def test_default_layer_rule_skips_the_stem_and_1x1_and_keeps_strided_convs_dense() -> None:
    model = _net()
    method = create_method("trp")
    assert [n for n, _ in method.trained_layers(model)] == ["1", "2"]
    assert [n for n, _ in method.decomposed_layers(model)] == ["1"]
    assert [n for n, _ in create_method("trp", include_1x1=True).trained_layers(model)] == ["1", "2", "3"]
    assert [n for n, _ in create_method("trp", decompose_strided=True).decomposed_layers(model)] == ["1", "2"]
    r20 = create("resnet20", shortcut="B")
    assert len(method.trained_layers(r20)) == 18 and len(method.decomposed_layers(r20)) == 16


# ---------------------------------------------------------------- decomposition and its cost


def test_a_layer_whose_factorised_form_costs_more_is_left_dense_and_reported() -> None:
    model = _net()
    x = torch.randn(2, 2, 6, 6)
    # Threshold 0 keeps full rank 8: NC costs 8·72·36 + 8·8·36 = 23,040 MACs > the conv's 8·72·36 = 20,736.
    pruned = create_method("trp", rule="value", threshold=0.0).prune(model, x)
    assert pruned.details["ranks"] == {}
    assert pruned.details["left_dense"] == {
        "1": {"rank": 8, "full_rank": 8, "macs": 20736, "factorised_macs": 23040}
    }
    assert type(pruned.model[1]) is nn.Conv2d
    # Rank 7 (7·80·36 = 20,160 < 20,736) is decomposed; the pruned model costs exactly that.
    sigma = torch.linalg.svdvals(to_matrix(model[1].weight.detach(), "NC"))
    threshold = float(sigma[6]) * (1 - 1e-6)
    pruned = create_method("trp", rule="value", threshold=threshold).prune(model, x)
    assert pruned.details["ranks"] == {"1": 7} and pruned.details["left_dense"] == {}
    assert isinstance(pruned.model[1], LowRankConv2d)
    dense = cost(model, (2, 6, 6)).macs
    assert cost(pruned.model, (2, 6, 6)).macs == dense - 20736 + 20160


@pytest.mark.parametrize("scheme", ["NC", "VH", "ND"])
@pytest.mark.parametrize("stride", [1, 2])
def test_lowrank_macs_prices_what_cost_counts(scheme: str, stride: int) -> None:
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=1, bias=False)
    built = LowRankConv2d.from_conv(conv, scheme, 4)
    h_out = 9 // stride + (1 if stride == 2 else 0)  # 9 → 9 (stride 1) or 5 (stride 2)
    priced = lowrank_macs(conv, scheme, 4, (9, 9), (h_out, h_out))
    assert priced == cost(built, (6, 9, 9)).macs
    by_hand = {
        ("NC", 1): 4 * 54 * 81 + 10 * 4 * 81,
        ("NC", 2): 4 * 54 * 25 + 10 * 4 * 25,
        ("VH", 1): 4 * 18 * 81 + 10 * 4 * 3 * 81,
        ("VH", 2): 4 * 18 * 5 * 9 + 10 * 4 * 3 * 25,  # the vertical factor runs at the input width
        ("ND", 1): 10 * 4 * 6 * 81 + 10 * 4 * 9 * 81,
        ("ND", 2): 10 * 4 * 6 * 81 + 10 * 4 * 9 * 25,  # the pointwise factor runs at the input size
    }
    assert priced == by_hand[scheme, stride]


def test_trp_counter_reproduces_the_resnet20_baseline_and_the_decomposed_count() -> None:
    model = create("resnet20", shortcut="B")
    assert trp_flops(model, (3, 32, 32)) == 40_812_544  # specs/trp.md §8.1
    assert thop_params(model) == 272_474  # the README's 0.27M
    assert counter("trp").flops is trp_flops
    x = torch.randn(1, 3, 32, 32)
    pruned = create_method("trp", rule="energy", threshold=0.3, scheme="VH").prune(model, x)
    ranks = pruned.details["ranks"]
    assert len(ranks) == 16
    # The release's formula: each decomposed conv costs (c·kh + n·kw)·r per output position.
    modules = dict(model.named_modules())
    saved = 0
    for name, r in ranks.items():
        n, c, kh, kw = modules[name].weight.shape
        hw = (32 // (n // 16)) ** 2
        saved += (n * c * kh * kw - (c * kh + n * kw) * r) * hw
    assert trp_flops(pruned.model, (3, 32, 32)) == 40_812_544 - saved


def test_a_decomposed_model_saves_and_loads(tmp_path) -> None:
    model = create("resnet20", shortcut="B", in_channels=1).eval()
    x = torch.randn(4, 1, 28, 28)
    small = prunekit.prune(model, x[:1], method="trp", calib=x, rule="energy", threshold=0.2).eval()
    model_file.save(small, tmp_path / "m.safetensors")
    again = model_file.load(tmp_path / "m.safetensors").eval()
    assert isinstance(again.get_submodule("layer1.0.conv1"), LowRankConv2d)
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x), rtol=0, atol=0)


def test_a_mac_budget_moves_the_threshold() -> None:
    model = create("resnet20", shortcut="B")
    x = torch.randn(4, 3, 32, 32)
    dense = cost(model, (3, 32, 32)).macs
    # The value rule with VH (the conformance test checks NC with the energy rule).
    small = prunekit.prune(model, x[:1], method="trp", calib=x, target_macs=0.4, scheme="VH")
    assert abs(cost(small, (3, 32, 32)).macs / dense - 0.4) <= 0.02 * 0.4
    assert isinstance(small.get_submodule("layer3.2.conv2"), LowRankConv2d)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"energy": 0.0}, r"energy must be in \(0, 1\]"),
        ({"energy": 1.5}, r"energy must be in \(0, 1\]"),
        ({"threshold": -0.1}, "threshold must be >= 0"),
        ({"rule": "energy", "threshold": 1.0}, r"discarded sigma\^2 share e, in \[0, 1\)"),
        ({"period": 0}, "period must be an integer >= 1"),
        ({"nuclear_weight": -1e-4}, "nuclear_weight must be >= 0"),
        ({"layers": "conv,"}, "empty pattern"),
        ({"scheme": "DN"}, "must be one of 'NC', 'VH', 'ND'"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_method("trp", **options)


def test_non_finite_weights_while_training_are_named() -> None:
    model = _pair()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(PrunekitError, match="conv weights are not finite at step 3 .training diverged"):
        create_method("trp", layers="1").after_step(model, 3)


def test_bad_layer_choices_are_refused_before_any_work() -> None:
    model, x = _net(), torch.randn(1, 2, 6, 6)
    with pytest.raises(ConfigError, match="the nuclear baseline needs nuclear_weight > 0"):
        create_method("nuclear", nuclear_weight=0.0)
    with pytest.raises(ConfigError, match=r"pattern 'layer9\*' matches no conv"):
        create_method("trp", layers="layer9*").prune(model, x)
    with pytest.raises(ConfigError, match="the model has no 1x1 conv"):
        create_method("trp", include_1x1=True).prune(create("resnet20"), torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="none of the selected convs is strided"):
        create_method("trp", layers="1", decompose_strided=True).prune(model, x)
    with pytest.raises(ConfigError, match="takes no per-layer ratios"):
        create_method("trp", "*:0.5")
