"""Torch-Pruning's pruners as methods: prunekit's model equals Torch-Pruning's own result channel for
channel, and prunekit's option-A shortcut pruner is what keeps Torch-Pruning's result sound."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp

import prunekit
from prunekit.errors import ConfigError
from prunekit.measure import cost
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.surgery.graph import CUSTOMIZED_PRUNERS

X = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # distinct |γ| per channel, as after training
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.1
    return model


def _tp_alone(model: torch.nn.Module, importance: object, shortcut_pruner: bool) -> torch.nn.Module:
    trial = copy.deepcopy(model)
    tp.pruner.MetaPruner(
        trial,
        X[:2],
        importance=importance,
        pruning_ratio=0.5,
        ignored_layers=[trial.fc],
        customized_pruners=dict(CUSTOMIZED_PRUNERS) if shortcut_pruner else None,
    ).step()
    return trial


@pytest.mark.parametrize(
    ("name", "importance"),
    [
        ("tp-magnitude", lambda: tp.importance.MagnitudeImportance(p=1)),
        ("tp-group-norm", lambda: tp.importance.GroupMagnitudeImportance(p=2)),
        ("tp-bn-scale", tp.importance.BNScaleImportance),
    ],
)
def test_prunekit_removes_exactly_what_torch_pruning_removes(name: str, importance) -> None:
    model = _model()
    ours = prunekit.prune(model, X[:1], method=name, ratio=0.5, calib=X)
    theirs = _tp_alone(model, importance(), shortcut_pruner=True)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    # Half of every prunable group's channels: the stem group 16 -> 8, stage 3's convs 64 -> 32.
    assert ours.get_submodule("conv1").out_channels == 8
    assert ours.get_submodule("layer3.2.conv1").out_channels == 32


def test_without_prunekits_shortcut_pruner_torch_pruning_breaks_option_a_resnets() -> None:
    broken = _tp_alone(_model(), tp.importance.MagnitudeImportance(p=1), shortcut_pruner=False)
    with pytest.raises((RuntimeError, IndexError)):
        broken(X)


def test_taylor_uses_the_calibration_images() -> None:
    model = _model()
    a = prunekit.prune(model, X[:1], method="tp-taylor", ratio=0.5, calib=X)
    b = prunekit.prune(model, X[:1], method="tp-taylor", ratio=0.5, calib=torch.flip(X, dims=(0, 3)) * 3)
    assert a.get_submodule("conv1").out_channels == b.get_submodule("conv1").out_channels == 8
    assert not torch.equal(a.get_submodule("conv1").weight, b.get_submodule("conv1").weight)
    dense = cost(model, (3, 32, 32)).macs
    assert cost(a, (3, 32, 32)).macs < dense


def test_ratio_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\), got 1.0"):
        create_method("tp-magnitude", ratio="1.0")
    with pytest.raises(ConfigError, match=r"ratio 1 is outside \[0, 1\)"):
        prunekit.prune(_model(), X[:1], method="tp-magnitude", ratio=1.0, calib=X)
