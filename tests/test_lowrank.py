from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from prunekit.errors import ConfigError, SurgeryError
from prunekit.measure.cost import cost
from prunekit.surgery.lowrank import (
    LowRankConv2d,
    decompose,
    energy_rank,
    from_matrix,
    full_rank,
    rank_for_energy,
    rank_for_value,
    rank_plan,
    singular_values,
    to_matrix,
)


def _conv(*args, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(*args, **kw)
    with torch.no_grad():
        conv.weight.normal_()
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


def _effective_matrix(lr: LowRankConv2d) -> torch.Tensor:
    """The scheme matrix the two factors multiply back to (float64)."""
    a, b = lr.first.weight.detach().double(), lr.second.weight.detach().double()
    if lr.scheme == "NC":
        return b.flatten(1) @ a.flatten(1)
    if lr.scheme == "ND":  # filter i: Σ_j (pointwise of path j) ⊗ (depthwise kernel of path j)
        n, rank = b.shape[:2]
        pointwise = a.reshape(n, rank, -1)  # (n, R, c)
        return pointwise.transpose(1, 2) @ b.reshape(n, rank, -1)  # (n, c, kh·kw)
    c, kh = a.shape[1], a.shape[2]
    n, kw = b.shape[0], b.shape[3]
    return a.squeeze(3).permute(1, 2, 0).reshape(c * kh, lr.rank) @ b.squeeze(2).permute(1, 0, 2).reshape(
        lr.rank, n * kw
    )


CONV_CASES = [
    dict(kernel_size=(3, 2), stride=2, padding=1, dilation=2),
    dict(kernel_size=3, stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
    dict(kernel_size=(3, 5), padding="same"),
    dict(kernel_size=3, stride=2, padding=1, padding_mode="circular"),
]


@pytest.mark.parametrize("scheme", ["NC", "VH", "ND"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_full_rank_reproduces_the_conv(scheme: str, case: dict) -> None:
    conv = _conv(3, 5, bias=True, **case)
    x = torch.randn(2, 3, 11, 9)
    lr = LowRankConv2d.from_conv(conv, scheme, full_rank(conv, scheme))
    torch.testing.assert_close(lr(x), conv(x), atol=1e-5, rtol=1e-5)


def test_factor_layer_geometry() -> None:
    conv = _conv(3, 5, (3, 2), stride=2, padding=1, dilation=2)
    nc = LowRankConv2d.from_conv(conv, "NC", 4)
    assert (nc.first.in_channels, nc.first.out_channels, nc.first.kernel_size) == (3, 4, (3, 2))
    assert (nc.first.stride, nc.first.padding, nc.first.dilation, nc.first.bias) == (
        (2, 2),
        (1, 1),
        (2, 2),
        None,
    )
    assert (nc.second.kernel_size, nc.second.stride, nc.second.padding) == ((1, 1), (1, 1), (0, 0))
    assert torch.equal(nc.second.bias, conv.bias)

    vh = LowRankConv2d.from_conv(conv, "VH", 4)
    assert (vh.first.kernel_size, vh.first.stride, vh.first.padding, vh.first.dilation) == (
        (3, 1),
        (2, 1),
        (1, 0),
        (2, 1),
    )
    assert vh.first.bias is None
    assert (vh.second.kernel_size, vh.second.stride, vh.second.padding, vh.second.dilation) == (
        (1, 2),
        (1, 2),
        (0, 1),
        (1, 2),
    )
    assert torch.equal(vh.second.bias, conv.bias)
    assert (vh.rank, vh.scheme) == (4, "VH")


def test_nc_splits_root_sigma_to_each_factor() -> None:
    # M = [[3, 0], [0, 4]]: rank 1 keeps σ = 4 along e2, so each factor carries √4 = 2 on e2.
    conv = nn.Conv2d(1, 2, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[3.0, 0.0]]], [[[0.0, 4.0]]]]))
    lr = LowRankConv2d.from_conv(conv, "NC", 1)
    torch.testing.assert_close(lr.first.weight.abs(), torch.tensor([[[[0.0, 2.0]]]]))
    torch.testing.assert_close(lr.second.weight.abs(), torch.tensor([[[[0.0]]], [[[2.0]]]]))
    torch.testing.assert_close(
        _effective_matrix(lr), torch.tensor([[0.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    )


def test_vh_puts_all_sigma_in_the_horizontal_factor() -> None:
    # Kernel [[1, 2], [2, 4]] = [1, 2]ᵀ[1, 2]: σ1 = 5, u = v = [1, 2]/√5.
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [2.0, 4.0]]]]))
    assert energy_rank(conv, "VH", 0.999) == 1
    lr = LowRankConv2d.from_conv(conv, "VH", 1)
    r5 = math.sqrt(5)
    torch.testing.assert_close(lr.first.weight.abs().flatten(), torch.tensor([1 / r5, 2 / r5]))
    torch.testing.assert_close(lr.second.weight.abs().flatten(), torch.tensor([r5, 2 * r5]))
    x = torch.randn(1, 1, 6, 7)
    torch.testing.assert_close(lr(x), conv(x), atol=1e-5, rtol=1e-5)


def test_nd_splits_each_filter_on_its_own() -> None:
    # Filter 0's (c, kh·kw) matrix [[3, 0], [0, 4]]: rank 1 keeps σ = 4 on channel 1, position 1, and
    # √4 = 2 goes to the pointwise and to the depthwise factor. Filter 1's [[0, 1], [0, 0]] keeps σ = 1.
    conv = nn.Conv2d(2, 2, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[3.0, 0.0]], [[0.0, 4.0]]], [[[0.0, 1.0]], [[0.0, 0.0]]]]))
    assert full_rank(conv, "ND") == 2 and energy_rank(conv, "ND", 0.6) == 1  # 16/25 ≥ 0.6 and 1/1
    assert energy_rank(conv, "ND", 0.7) == 2  # filter 0 needs both; the common rank is the largest
    lr = LowRankConv2d.from_conv(conv, "ND", 1)
    assert (lr.first.out_channels, lr.second.groups, lr.second.kernel_size) == (2, 2, (1, 2))
    torch.testing.assert_close(lr.first.weight.abs().flatten(), torch.tensor([0.0, 2.0, 1.0, 0.0]))
    torch.testing.assert_close(lr.second.weight.abs().flatten(), torch.tensor([0.0, 2.0, 0.0, 1.0]))
    expected = torch.tensor([[[0.0, 0.0], [0.0, 4.0]], [[0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(_effective_matrix(lr), expected)


def test_matrix_layouts() -> None:
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    nc = to_matrix(w, "NC")
    assert nc.shape == (2, 12)
    assert torch.equal(nc[1], w[1].flatten())
    vh = to_matrix(w, "VH")
    assert vh.shape == (6, 4)
    # row (ci, y), column (o, x)
    assert vh[2 * 2 + 1, 1 * 2 + 0] == w[1, 2, 1, 0]
    nd = to_matrix(w, "ND")
    assert nd.shape == (2, 3, 4)  # one (c, kh·kw) matrix per output filter
    assert nd[1, 2, 1 * 2 + 0] == w[1, 2, 1, 0]
    for scheme in ("NC", "VH", "ND"):
        assert torch.equal(from_matrix(to_matrix(w, scheme), scheme, w.shape), w)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(1, 5),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    scheme=st.sampled_from(["NC", "VH", "ND"]),
    data=st.data(),
)
def test_truncation_error_is_the_discarded_energy(n, c, kh, kw, scheme, data) -> None:
    torch.manual_seed(n * 100 + c * 10 + kh + kw)
    conv = _conv(c, n, (kh, kw), bias=False)
    rank = data.draw(st.integers(1, full_rank(conv, scheme)))
    lr = LowRankConv2d.from_conv(conv, scheme, rank)
    m = to_matrix(conv.weight.detach().double(), scheme)
    sigma = np.linalg.svd(m.numpy(), compute_uv=False)  # ND: one row per filter, each truncated at rank
    err = float((m - _effective_matrix(lr)).square().sum())
    assert err == pytest.approx(float((sigma[..., rank:] ** 2).sum()), abs=1e-5)
    # and the module computes exactly the conv with that truncated weight
    x = torch.randn(1, c, 5, 6)
    w_r = from_matrix(_effective_matrix(lr).float(), scheme, conv.weight.shape)
    torch.testing.assert_close(lr(x), F.conv2d(x, w_r), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("scheme", "rank", "stride", "params", "macs"),
    [
        # NC: first 2·4·9 = 72 weights, second 6·2 = 12 + 6 bias; both at the 8×8 output.
        ("NC", 2, 1, 72 + 12 + 6, (72 + 12) * 64),
        ("NC", 2, 2, 72 + 12 + 6, (72 + 12) * 16),
        # VH: first 3·4·3 = 36, second 6·3·3 = 54 + 6 bias. Stride 2: first runs at 4×8, second at 4×4.
        ("VH", 3, 1, 36 + 54 + 6, (36 + 54) * 64),
        ("VH", 3, 2, 36 + 54 + 6, 36 * 32 + 54 * 16),
        # ND: first 1×1 4 → 6·2 = 48 weights, second 12 → 6 in 6 groups: 6·2·9 = 108 + 6 bias. The pointwise
        # factor runs at the 8×8 input; stride 2: the depthwise one at 4×4.
        ("ND", 2, 1, 48 + 108 + 6, (48 + 108) * 64),
        ("ND", 2, 2, 48 + 108 + 6, 48 * 64 + 108 * 16),
    ],
)
def test_prunekit_cost_by_hand(scheme: str, rank: int, stride: int, params: int, macs: int) -> None:
    conv = _conv(4, 6, 3, stride=stride, padding=1)
    lr = LowRankConv2d.from_conv(conv, scheme, rank)
    x = torch.randn(2, 4, 8, 8)
    assert lr.prunekit_cost((x,), lr(x)) == (params, macs)


def test_cost_counts_the_factorised_convs() -> None:
    model = nn.Sequential(_conv(4, 6, 3, stride=2, padding=1), nn.ReLU(), _conv(6, 6, 3, padding=1))
    costed = cost(decompose(model, {"0": ("VH", 3), "2": ("NC", 2)}), (4, 8, 8))
    # "0" as in the hand case above; "2": first 2·6·9 = 108, second 6·2 = 12 + 6 bias, at the 4×4 output
    assert [(row.name, row.params, row.macs) for row in costed.layers if row.macs] == [
        ("0", 96, 2016),
        ("2", 108 + 12 + 6, (108 + 12) * 16),
    ]


def _model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("stem", _conv(3, 4, 3, padding=1))
    model.add_module("bn", nn.BatchNorm2d(4))
    model.add_module("block", nn.Sequential(_conv(4, 6, 3, padding=1), nn.ReLU(), _conv(6, 5, 3, padding=1)))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(5, 2))
    model.prunekit_arch = {"name": "toy", "kwargs": {}}
    return model.eval()


def test_decompose_replaces_only_planned_layers() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = decompose(model, {"block.0": ("NC", 6), "block.2": ("VH", 2)})

    assert isinstance(model.block[0], nn.Conv2d) and isinstance(model.block[2], nn.Conv2d)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(new.block[0], LowRankConv2d) and (new.block[0].scheme, new.block[0].rank) == ("NC", 6)
    assert isinstance(new.block[2], LowRankConv2d) and (new.block[2].scheme, new.block[2].rank) == ("VH", 2)
    assert not new.block[0].training
    assert new.prunekit_arch == {"name": "toy", "kwargs": {}}
    state = new.state_dict()
    untouched = {k for k in before if not k.startswith(("block.0.", "block.2."))}
    assert untouched == {k for k in state if not k.startswith(("block.0.", "block.2."))}
    assert all(torch.equal(state[k], before[k]) for k in untouched)
    assert {k for k in state if k.startswith("block.2.")} == {
        "block.2.first.weight",
        "block.2.second.weight",
        "block.2.second.bias",
    }


def test_decompose_at_full_rank_keeps_outputs() -> None:
    model = _model()
    new = decompose(model, {"stem": ("VH", 9), "block.0": ("NC", 6), "block.2": ("VH", 15)})
    x = torch.randn(3, 3, 7, 7)
    torch.testing.assert_close(new(x), model(x), atol=1e-5, rtol=1e-5)


def test_rank_rules_by_hand() -> None:
    sigma = torch.tensor([3.0, 2.0, 1.0])  # σ² = 9, 4, 1; cumulative energy 9/14, 13/14, 1
    assert [rank_for_energy(sigma, t) for t in (0.5, 9 / 14, 0.65, 0.9, 0.95)] == [1, 1, 2, 2, 3]
    assert [rank_for_value(sigma, t) for t in (0.5, 1.5, 2.0, 5.0)] == [3, 2, 2, 1]
    assert rank_for_energy(torch.zeros(3), 0.9) == 1
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(torch.tensor([1.0, 3.0, 2.0]))[:, :, None, None])
    assert (energy_rank(conv, "NC", 0.9), energy_rank(conv, "NC", 0.95)) == (2, 3)
    assert (full_rank(conv, "NC"), full_rank(nn.Conv2d(4, 8, (3, 2)), "VH")) == (3, 12)


def test_rank_plan_matches_single_layer_rules() -> None:
    model = _model()
    layers = ["stem", "block.0", "block.2"]
    plan = rank_plan(model, layers, "NC", energy=0.8)
    assert plan == {name: ("NC", energy_rank(model.get_submodule(name), "NC", 0.8)) for name in layers}
    sigma = singular_values(model.block[2], "VH")
    t = float(sigma[3])  # exactly 4 singular values reach it
    assert rank_plan(model, ["block.2"], "VH", threshold=t) == {"block.2": ("VH", 4)}
    with pytest.raises(ConfigError, match="give exactly one rank rule"):
        rank_plan(model, layers, "NC")
    with pytest.raises(SurgeryError, match="'fc' is a Linear"):
        rank_plan(model, ["fc"], "NC", energy=0.9)


@pytest.mark.parametrize("energy", [0.0, 1.0, -0.1])
def test_energy_out_of_range(energy: float) -> None:
    with pytest.raises(ConfigError, match=r"energy threshold must be in \(0, 1\)"):
        rank_for_energy(torch.ones(3), energy)


def test_errors_name_the_problem() -> None:
    model = _model()
    with pytest.raises(
        SurgeryError, match=r"rank 0 for layer 'block.0' \(NC\).*1\.\.6 \(full rank of its \(6, 36\) matrix\)"
    ):
        decompose(model, {"block.0": ("NC", 0)})
    with pytest.raises(SurgeryError, match=r"rank 16 for layer 'block.2' \(VH\).*1\.\.15 .*\(18, 15\)"):
        decompose(model, {"block.2": ("VH", 16)})
    with pytest.raises(SurgeryError, match=r"rank 2\.0"):
        decompose(model, {"block.0": ("NC", 2.0)})
    with pytest.raises(ConfigError, match=r"unknown low-rank scheme 'CN'; valid low-rank schemes: NC, ND, V"):
        decompose(model, {"block.0": ("CN", 2)})
    with pytest.raises(ConfigError, match=r"no layer named 'blok.0'.*did you mean 'block.0'"):
        decompose(model, {"blok.0": ("NC", 2)})
    with pytest.raises(SurgeryError, match=r"'fc' is a Linear, not an nn.Conv2d"):
        decompose(model, {"fc": ("NC", 2)})
    with pytest.raises(ConfigError, match=r"must be \(scheme, rank\)"):
        decompose(model, {"block.0": "NC"})
    with pytest.raises(SurgeryError, match=r"'g' is a grouped conv \(groups=2\)"):
        LowRankConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), "NC", 1, name="g")
    # nothing was half-applied
    assert all(type(m) is not LowRankConv2d for m in model.modules())
