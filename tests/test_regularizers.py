"""DeepHoyer regularisers: values and gradients by hand (spec §1, §2.1), invariances, zero guards."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError
from prunekit.methods.deephoyer import regularizers as R


def value_and_grad(fn, values) -> tuple[float, list]:
    w = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    out = fn(w)
    out.backward()
    return float(out.detach()), w.grad.tolist()


W340 = [3.0, 4.0, 0.0]  # ‖w‖₁ = 7, ‖w‖₂² = 25


def test_l1_value_and_subgradient_zero_at_zero():
    value, grad = value_and_grad(R.l1, W340)
    assert value == 7.0
    assert grad == [1.0, 1.0, 0.0]


def test_hoyer_square_matches_the_closed_form():
    # HS = 49/25; ∂/∂w_j = (2‖w‖₁/‖w‖₂⁴)(‖w‖₂² sign(w_j) − ‖w‖₁ w_j) = (14/625)(25 sign − 7 w_j)
    value, grad = value_and_grad(R.hoyer_square, W340)
    assert value == pytest.approx(49 / 25)
    assert grad == pytest.approx([56 / 625, -42 / 625, 0.0])


def test_hoyer_matches_the_closed_form():
    # ‖w‖₁/‖w‖₂ = 7/5; ∂/∂w_j = sign(w_j)/‖w‖₂ − ‖w‖₁ w_j/‖w‖₂³
    value, grad = value_and_grad(R.hoyer, W340)
    assert value == pytest.approx(7 / 5)
    assert grad == pytest.approx([1 / 5 - 21 / 125, 1 / 5 - 28 / 125, 0.0])


def test_transformed_l1_with_a_1_and_a_2():
    # a = 1: Σ 2|w|/(1+|w|) = 6/4 + 8/5; ∂ = 2 sign/(1+|w|)²
    value, grad = value_and_grad(R.transformed_l1, W340)
    assert value == pytest.approx(3.1)
    assert grad == pytest.approx([2 / 16, 2 / 25, 0.0])
    value, _ = value_and_grad(lambda w: R.transformed_l1(w, a=2.0), W340)
    assert value == pytest.approx(9 / 5 + 12 / 6)


def test_hoyer_square_gradient_is_orthogonal_to_w():
    w = torch.tensor([0.3, -1.2, 0.05, 2.0], dtype=torch.float64, requires_grad=True)
    R.hoyer_square(w).backward()
    assert float(w.grad @ w.detach()) == pytest.approx(0.0, abs=1e-12)


# A conv with 2 filters, 2 input channels, 1×2 kernels. Filter norms 5 and 10; input-channel norms √125
# and 0 (channel 1 is all zero: the zero-group guard is exercised too). ‖W‖² = 125.
CONV = [[[[3.0, 4.0]], [[0.0, 0.0]]], [[[6.0, 8.0]], [[0.0, 0.0]]]]


def test_group_norms_of_a_two_filter_conv():
    filters, channels = R.group_norms(torch.tensor(CONV))
    assert filters.tolist() == pytest.approx([5.0, 10.0])
    assert channels.tolist() == pytest.approx([math.sqrt(125), 0.0])


def test_group_lasso_group_hoyer_and_group_hs_of_a_two_filter_conv():
    w = torch.tensor(CONV, dtype=torch.float64)
    assert float(R.group_lasso(w)) == pytest.approx(15 + math.sqrt(125))
    assert float(R.group_hoyer(w)) == pytest.approx((15 + math.sqrt(125)) / math.sqrt(125))
    assert float(R.group_hs(w)) == pytest.approx((15**2 + 125) / 125)  # 2.8


def test_fibre_grouping_reproduces_the_release_dims_0_1_sums():
    # dim-1 fibres W[o, :, 0, x]: 3, 4, 6, 8 → 21; dim-0 fibres W[:, i, 0, x]: √45, √80, 0, 0 → 7√5
    w = torch.tensor(CONV, dtype=torch.float64)
    assert float(R.group_lasso(w, fibre=True)) == pytest.approx(21 + 7 * math.sqrt(5))
    assert float(R.group_hs(w, fibre=True)) == pytest.approx((21**2 + 245) / 125)


def test_linear_groups_are_rows_and_columns():
    w = torch.tensor([[3.0, 0.0], [4.0, 0.0]])  # rows 3, 4; columns 5, 0
    assert float(R.group_lasso(w)) == pytest.approx(12.0)
    assert float(R.group_hs(w)) == pytest.approx((49 + 25) / 25)


def test_group_hs_gradient_matches_the_closed_form_and_is_finite_on_a_zero_group():
    # ∂/∂w = Σ over the two groupings of 2(S1/S2)·w/s_g − 2(S1²/S2²)·w  (spec §2.1), 0 on a zero group
    w = torch.tensor(CONV, dtype=torch.float64, requires_grad=True)
    R.group_hs(w).backward()
    W = w.detach()
    s2 = float(W.square().sum())
    expected = torch.zeros_like(W)
    for dim in (0, 1):
        norms = W.square().sum(dim=[d for d in range(4) if d != dim], keepdim=True).sqrt()
        s1 = float(norms.sum())
        expected += 2 * (s1 / s2) * W / norms.where(norms > 0, 1.0) - 2 * (s1**2 / s2**2) * W
    assert torch.isfinite(w.grad).all()
    torch.testing.assert_close(w.grad, expected)


@pytest.mark.parametrize("name", R.REGULARIZERS)
def test_a_zero_tensor_gives_zero_and_a_zero_gradient_not_nan(name):
    w = torch.zeros(3, 2, 3, 3, requires_grad=True)
    value = R.regularizer(name)(w)
    value.backward()
    assert float(value.detach()) == 0.0
    assert bool((w.grad == 0).all())


def test_total_sums_one_term_per_tensor():
    a, b = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([1.0, 1.0])
    assert float(R.total([a, b], "hoyer_square")) == pytest.approx(49 / 25 + 2.0)  # HS of the concat: 4


def test_unknown_regularizer_lists_the_valid_names():
    with pytest.raises(
        ConfigError, match=r"unknown regularizer 'hs'; valid regularizers: group_hoyer, group_hs, group_lasso"
    ):
        R.regularizer("hs")


def test_group_regularizer_refuses_a_vector_and_tl1_refuses_a_nonpositive_a():
    with pytest.raises(ConfigError, match=r"≥ 2 dims\), got a tensor of shape \(4,\)"):
        R.group_hs(torch.ones(4))
    with pytest.raises(ConfigError, match="transformed L1 needs a > 0, got 0"):
        R.regularizer("transformed_l1", a=0.0)
    with pytest.raises(ConfigError, match="given no tensors"):
        R.total([], "l1")


finite = st.floats(-10, 10, allow_nan=False).filter(lambda v: abs(v) > 1e-3)
scales = st.floats(1e-2, 1e2).flatmap(lambda v: st.sampled_from([v, -v]))


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12), scales)
def test_hoyer_square_is_scale_invariant_and_between_1_and_n(values, alpha):
    w = torch.tensor(values, dtype=torch.float64)
    hs = float(R.hoyer_square(w))
    assert float(R.hoyer_square(alpha * w)) == pytest.approx(hs, rel=1e-9)
    assert 1 - 1e-9 <= hs <= len(values) + 1e-9


@settings(max_examples=40, deadline=None)
@given(
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)).flatmap(
        lambda s: st.lists(finite, min_size=s[0] * s[1] * s[2] ** 2, max_size=s[0] * s[1] * s[2] ** 2).map(
            lambda v: torch.tensor(v, dtype=torch.float64).reshape(s[0], s[1], s[2], s[2])
        )
    ),
    scales,
)
def test_group_hs_is_scale_invariant_and_the_sum_of_two_hoyer_squares(w, alpha):
    ghs = float(R.group_hs(w))
    assert float(R.group_hs(alpha * w)) == pytest.approx(ghs, rel=1e-9)
    filters, channels = R.group_norms(w)
    assert ghs == pytest.approx(float(R.hoyer_square(filters) + R.hoyer_square(channels)), rel=1e-9)
    assert 2 - 1e-9 <= ghs <= w.shape[0] + w.shape[1] + 1e-9
