"""`surgery.apply` dispatches on the plan's kind (channels, low-rank, masks); a method returning any kind
goes through the default `Method.prune`, and each kind round-trips through the model file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from prunekit import model_file
from prunekit.errors import ConfigError, SurgeryError
from prunekit.methods import Method
from prunekit.models import create
from prunekit.surgery import LowRankConv2d, LowRankPlan, MaskPlan, apply, plan_kind
from prunekit.surgery.channels import apply as apply_channels


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return create("lenet5").eval()


X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def test_kinds_are_tagged_and_anything_else_is_refused() -> None:
    assert plan_kind({"conv1": [0, 1]}) == "channels"
    assert plan_kind(LowRankPlan({"conv2": ("NC", 2)})) == "low_rank"
    assert plan_kind(MaskPlan({"conv1.weight": torch.ones(20, 1, 5, 5, dtype=torch.bool)})) == "masks"
    with pytest.raises(ConfigError, match="LowRankPlan or a MaskPlan; got list"):
        plan_kind([("conv1", [0])])


def test_channel_mapping_is_the_channel_surgery() -> None:
    model = _lenet()
    plan = {"conv1": [0, 2, 4]}
    a, b = apply(model, plan, X[:1]), apply_channels(model, plan, X[:1])
    assert a.get_submodule("conv1").out_channels == 3
    torch.testing.assert_close(a(X), b(X), rtol=0, atol=0)


def test_low_rank_at_full_rank_keeps_outputs_and_reloads(tmp_path: Path) -> None:
    model = _lenet()
    conv2 = model.get_submodule("conv2")  # 50 x 20 x 5 x 5: NC full rank = min(50, 20 * 5 * 5) = 50
    smaller = apply(model, LowRankPlan({"conv2": ("NC", 50)}), X[:1])
    assert isinstance(smaller.get_submodule("conv2"), LowRankConv2d)
    assert model.get_submodule("conv2") is conv2  # the input model is untouched
    torch.testing.assert_close(smaller(X), model(X), rtol=1e-4, atol=1e-5)
    reduced = apply(model, LowRankPlan({"conv2": ("NC", 3)}), X[:1])
    assert reduced.get_submodule("conv2").rank == 3
    model_file.save(reduced, tmp_path / "m.safetensors")
    torch.testing.assert_close(prunekit.load(tmp_path / "m.safetensors")(X), reduced(X), rtol=0, atol=0)


def test_low_rank_entry_out_of_range_is_refused_before_building() -> None:
    with pytest.raises(
        SurgeryError, match=r"rank 51 for layer 'conv2' \(NC\) is out of range: must be an integer 1\.\.50"
    ):
        apply(_lenet(), LowRankPlan({"conv2": ("NC", 51)}), X[:1])


def test_mask_plan_zeroes_records_and_reloads(tmp_path: Path) -> None:
    model = _lenet()
    mask = torch.ones(20, 1, 5, 5, dtype=torch.bool)
    mask[1] = False  # the whole second filter
    mask[0, 0, 0, :] = False  # and five single weights of the first
    masked = apply(model, MaskPlan({"conv1.weight": mask}), X[:1])
    weight = masked.get_submodule("conv1").weight
    assert int((weight == 0).sum()) == 25 + 5
    assert bool((model.get_submodule("conv1").weight != 0).all())  # the input model is untouched
    model_file.save(masked, tmp_path / "m.safetensors")
    again = prunekit.load(tmp_path / "m.safetensors")
    assert int((again.get_submodule("conv1").weight == 0).sum()) == 30
    torch.testing.assert_close(again(X), masked(X), rtol=0, atol=0)


@dataclass
class _NoOptions:
    pass


class _HalfRank(Method):
    """Factorises conv2 at rank 4 (a method that only declares `plan`)."""

    name = "_test_half_rank"
    Options = _NoOptions

    def plan(self, model: nn.Module, calib: torch.Tensor | None) -> LowRankPlan:
        return LowRankPlan({"conv2": ("VH", 4)})


class _DropFilter(Method):
    """Masks conv1's first filter."""

    name = "_test_drop_filter"
    Options = _NoOptions

    def plan(self, model: nn.Module, calib: torch.Tensor | None) -> MaskPlan:
        mask = torch.ones_like(model.get_submodule("conv1").weight, dtype=torch.bool)
        mask[0] = False
        return MaskPlan({"conv1.weight": mask})


def test_default_prune_carries_out_every_kind() -> None:
    model = _lenet()
    low = _HalfRank().prune(model, X)
    assert low.model.get_submodule("conv2").rank == 4
    assert low.masks is None
    masked = _DropFilter().prune(model, X)
    assert masked.masks is not None and list(masked.masks) == ["conv1.weight"]
    assert int(masked.masks["conv1.weight"].logical_not().sum()) == 25
    assert bool((masked.model.get_submodule("conv1").weight[0] == 0).all())
