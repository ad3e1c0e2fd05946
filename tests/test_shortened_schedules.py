"""Smoke runs (recipes' --epochs-scale) shorten the sparsify stage a method declares in steps, too."""

import pytest

from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.pipeline import PruneSpec


def test_tpp_stage_shrinks_with_the_scale() -> None:
    tpp = create_method("tpp")
    # Released ramp from λ = 0 by Δ = 1e-4 every K_u = 5 steps to 1: 10,001 updates, t_stab = 50,000;
    # then K_s = 40,000 held: 90,001 steps.
    assert tpp.sparsify_steps(100) == 90_001
    short = tpp.shortened(0.01)
    # Δ = 0.01: 101 updates, t_stab = 500; K_s = 400; zeroing interval 100 → 1.
    assert (short.options.reg_granularity, short.options.stabilize_reg_interval) == (pytest.approx(0.01), 400)
    assert short.options.zero_out_interval == 1 and short.options.update_reg_interval == 5
    assert short.sparsify_steps(100) == 901
    assert tpp.options.reg_granularity == 1e-4  # the original is untouched


def test_methods_without_a_declared_length_and_bad_scales() -> None:
    l1 = create_method("l1")
    assert l1.shortened(0.1) is l1
    with pytest.raises(ConfigError, match=r"scale in \(0, 1\], got 1.5"):
        create_method("greg1").shortened(1.5)
    built = PruneSpec("greg2", step_scale=0.1).build()
    assert built.options.stabilize_reg_interval == 4000 and built.sparsify_steps(100) < 10_000
