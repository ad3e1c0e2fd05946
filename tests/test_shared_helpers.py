"""The helpers every layer shares: `evaluating` (train/eval flags restored), `check_same_outputs` (one
output-equality check) and `batchnorm_after` (one finder for "the BatchNorm after this layer")."""

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import SurgeryError
from prunekit.models.probe import batchnorm_after, evaluating, probe
from prunekit.surgery import OutputComparison, check_same_outputs, compare_outputs
from prunekit.surgery.dead_channels import zero_channel_plan


def _small_net() -> nn.Sequential:
    # conv → bn → relu → conv → relu: only the first conv feeds a BatchNorm directly.
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.ReLU())


def _mixed_modes(model: nn.Module) -> dict[str, bool]:
    """Put `model` in train mode except its BatchNorm (a mix `model.train(flag)` could not restore)."""
    model.train()
    model[1].eval()
    return {name: m.training for name, m in model.named_modules()}


def test_evaluating_restores_every_flag_also_after_an_exception() -> None:
    first, second = _small_net(), _small_net()
    flags = _mixed_modes(first)
    second.train()
    with pytest.raises(RuntimeError, match="boom"), evaluating(first, second):
        assert not any(m.training for m in (*first.modules(), *second.modules()))
        raise RuntimeError("boom")
    assert {name: m.training for name, m in first.named_modules()} == flags
    assert all(m.training for m in second.modules())


def test_evaluating_leaves_autograd_alone() -> None:
    model = _small_net()
    with evaluating(model):
        assert torch.is_grad_enabled()
        assert model(torch.randn(1, 3, 5, 5)).requires_grad


def test_probe_restores_flags_and_removes_hooks_when_the_forward_fails() -> None:
    model = _small_net()
    flags = _mixed_modes(model)
    handle = model[0].register_forward_hook(lambda *_: None)
    with pytest.raises(RuntimeError):
        probe(model, torch.randn(1, 5, 5, 5), [handle])  # 5 input channels for a 3-channel conv
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert not model[0]._forward_hooks


def test_check_same_outputs_passes_on_identical_models_and_restores_flags() -> None:
    reference = _small_net()
    candidate = copy.deepcopy(reference)
    flags = _mixed_modes(candidate)
    x = torch.randn(4, 3, 6, 6)
    check_same_outputs(reference, candidate, x, what="copying the model")
    assert {name: m.training for name, m in candidate.named_modules()} == flags
    assert all(m.training for m in reference.modules())  # a fresh module trains
    result = compare_outputs(reference, candidate, x)
    assert result == OutputComparison(True, 0.0, (4, 2, 4, 4), (4, 2, 4, 4))


def test_check_same_outputs_names_the_edit_and_the_difference() -> None:
    reference = nn.Linear(2, 1)
    candidate = copy.deepcopy(reference)
    with torch.no_grad():
        candidate.bias += 0.25  # every output moves by exactly 0.25
    x = torch.randn(3, 2)
    assert compare_outputs(reference, candidate, x).max_difference == pytest.approx(0.25)
    with pytest.raises(
        SurgeryError, match=r"^shifting the bias changed the model's outputs \(max difference 0\.25\)$"
    ):
        check_same_outputs(reference, candidate, x, what="shifting the bias")
    with pytest.raises(SurgeryError, match=r"\(max difference 0\.25\); layers: fc$"):
        check_same_outputs(reference, candidate, x, what="shifting the bias", hint="layers: fc")


def test_check_same_outputs_tolerance_is_relative_above_one_and_absolute_below() -> None:
    reference = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        reference.weight.fill_(1.0)
    candidate = copy.deepcopy(reference)
    with torch.no_grad():
        candidate.weight.fill_(1.0 + 2e-5)
    big, small = torch.tensor([[1000.0]]), torch.tensor([[0.01]])
    # |Δ| = 0.02 at 1000: within rtol·1000 + atol_scale·1000 = 0.11. At 0.01, |Δ| = 2e-7 < atol 1e-5.
    assert compare_outputs(reference, candidate, big).same
    assert compare_outputs(reference, candidate, small).same
    with torch.no_grad():
        candidate.weight.fill_(1.0 + 2e-4)  # |Δ| = 0.2 at 1000 > 0.11
    assert not compare_outputs(reference, candidate, big).same


def test_check_same_outputs_names_a_changed_shape() -> None:
    with pytest.raises(SurgeryError, match=r"output shape \(2, 3\) instead of \(2, 4\)"):
        check_same_outputs(nn.Linear(5, 4), nn.Linear(5, 3), torch.randn(2, 5), what="narrowing fc")


def test_batchnorm_after_maps_each_layer_to_the_batchnorm_reading_its_output() -> None:
    assert batchnorm_after(_small_net(), torch.randn(1, 3, 6, 6)) == {"0": "1"}


class _AfterAddAndConcat(nn.Module):
    """BatchNorms reached only through an add and a concatenation: neither is 'after' a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
        self.bn_sum, self.bn_cat = nn.BatchNorm2d(2), nn.BatchNorm2d(4)
        self.fc = nn.Linear(3, 3)
        self.bn_fc = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = self.bn_sum(a + b).mean((2, 3)) + self.bn_cat(torch.cat([a, b], 1)).mean((1, 2, 3))[:, None]
        return self.bn_fc(self.fc(y[:, :1].expand(-1, 3)))


def test_batchnorm_after_skips_batchnorms_behind_other_ops() -> None:
    model = _AfterAddAndConcat().train()
    assert batchnorm_after(model, torch.randn(2, 2, 3, 3)) == {"fc": "bn_fc"}
    assert all(m.training for m in model.modules())


class _ConcatThenBatchNorm(nn.Module):
    """DenseNet-style: conv1's output is concatenated with its input, then normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([x, self.conv1(x)], 1)
        return self.head(self.conv2(torch.relu(self.bn(y))).mean((2, 3)))


def test_a_zero_filter_behind_a_concatenated_batchnorm_is_not_dead() -> None:
    model = _ConcatThenBatchNorm().eval()
    with torch.no_grad():
        model.conv1.weight[0] = 0
        model.conv1.bias[0] = 0
        model.bn.bias.fill_(0.5)  # BN(0) = β − γ·μ/σ ≠ 0 at conv1's channel 0 (BN channel 4)
    example = torch.randn(1, 3, 8, 8)
    assert zero_channel_plan(model, example) == {}
    with torch.no_grad():
        model.bn.weight[4] = 0
        model.bn.bias[4] = 0  # now BN channel 4 outputs exactly zero
    assert zero_channel_plan(model, example) == {"conv1": [1, 2, 3]}
