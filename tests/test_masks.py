from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.errors import ConfigError, SurgeryError
from prunekit.surgery.masks import MaskHandle, MaskSet, attach, fold


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 2, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, handle: MaskHandle | None) -> None:
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if handle is not None:
            handle.after_step(model, step)


def test_from_threshold_is_strict_and_defaults_to_weights() -> None:
    model = Tiny()
    with torch.no_grad():
        model.fc.weight.fill_(0.5)
        model.fc.weight[0, :3] = torch.tensor([0.1, -0.2, 0.3])
    masks = MaskSet.from_threshold(model, 0.2)
    assert list(masks) == ["conv.weight", "fc.weight"]  # biases and BN stay dense
    assert masks["fc.weight"][0, :4].tolist() == [False, True, True, True]  # |w| = t survives
    assert int((~masks["fc.weight"]).sum()) == 1

    per = MaskSet.from_threshold(model, {"fc.bias": 10.0})
    assert list(per) == ["fc.bias"] and not per["fc.bias"].any()


def test_from_std_uses_population_std() -> None:
    model = Tiny()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([1.0, -2.0, 4.0]))  # mean 1, population std √6 ≈ 2.449
    masks = MaskSet.from_std(model, 0.5, params=["fc.bias"])  # t ≈ 1.2247
    assert masks["fc.bias"].tolist() == [False, True, True]
    masks = MaskSet.from_std(model, 0.9, params=["fc.bias"])  # t ≈ 2.2045 (sample std would give 2.70)
    assert masks["fc.bias"].tolist() == [False, False, True]


def test_group_masks_expand_along_a_dimension() -> None:
    model = Tiny()
    filters = MaskSet.from_groups(
        model, {"conv.weight": [0, 2], "conv.bias": torch.tensor([True, False, True, False])}, dim=0
    )
    channels = MaskSet.from_groups(model, {"conv.weight": torch.tensor([True, False])}, dim=1)
    both = filters & channels
    w = both["conv.weight"]
    assert w.shape == (4, 2, 3, 3)
    assert w[:, :, 1, 1].tolist() == [[True, False], [False, False], [True, False], [False, False]]
    assert int(w.sum()) == 2 * 9
    assert both["conv.bias"].tolist() == [True, False, True, False]


def test_masks_keep_zeros_exact_through_sgd_momentum_wd_nesterov() -> None:
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    _train(model, opt, 3, None)  # momentum buffers now hold nonzero history for every element
    masks = MaskSet.from_threshold(model, 0.1)
    pruned = sum(int((~m).sum()) for m in masks.values())
    before = model.fc.weight.detach().clone()
    handle = attach(model, masks)
    assert sum(int((model.get_parameter(n) == 0).sum()) for n in masks) == pruned
    _train(model, opt, 20, handle)
    zeros = sum(int((model.get_parameter(n) == 0).sum()) for n in masks)
    assert zeros == pruned
    assert all(bool((model.get_parameter(n)[~m] == 0).all()) for n, m in masks.items())
    kept = masks["fc.weight"]
    assert not torch.equal(model.fc.weight[kept], before[kept])  # training did happen
    assert model.conv.weight.grad[~masks["conv.weight"]].abs().sum() == 0


def test_without_reapply_stale_momentum_moves_masked_weights() -> None:
    # The control for the test above: hooks alone are not enough once momentum is pre-filled.
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    _train(model, opt, 3, None)
    masks = MaskSet.from_threshold(model, 0.1)
    attach(model, masks)
    _train(model, opt, 2, None)
    assert bool((model.fc.weight[~masks["fc.weight"]] != 0).any())


def test_masks_keep_zeros_exact_through_adam() -> None:
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    _train(model, opt, 2, None)
    masks = MaskSet.from_threshold(model, {"conv.weight": 0.15, "fc.weight": 0.05, "fc.bias": 0.1})
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned > 0
    handle = attach(model, masks)
    _train(model, opt, 20, handle)
    assert sum(int((model.get_parameter(n) == 0).sum()) for n in masks) == pruned


def test_remove_and_fold() -> None:
    model = Tiny()
    masks = MaskSet.from_groups(model, {"fc.weight": [0]}, dim=0)
    handle = attach(model, masks)
    assert handle.attached and int((model.fc.weight == 0).sum()) == 2 * 64
    handle.remove()
    handle.remove()
    assert not handle.attached
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    assert model.fc.weight.grad[1:].abs().sum() > 0  # no hook any more

    model = Tiny()
    assert fold(model, {"fc.weight": masks["fc.weight"].int()}) is model
    assert int((model.fc.weight == 0).sum()) == 2 * 64
    assert not model.fc.weight._backward_hooks

    with attach(model, masks) as handle:
        with torch.no_grad():
            model.fc.weight.fill_(1.0)
        fold(model, handle)
    assert not handle.attached
    assert int((model.fc.weight == 0).sum()) == 2 * 64
    assert handle.masks["fc.weight"].equal(masks["fc.weight"])
    with pytest.raises(SurgeryError, match=r"not in this model: \['fc.weight'\]"):
        fold(Tiny(), attach(model, masks))


def test_validation_messages() -> None:
    model = Tiny()
    with pytest.raises(ConfigError, match=r"no parameter named 'fc.weigth'.*did you mean 'fc.weight'"):
        attach(model, {"fc.weigth": torch.ones(3, 64, dtype=torch.bool)})
    with pytest.raises(SurgeryError, match=r"'fc.bias' has shape \(4,\) but the parameter has shape \(3,\)"):
        attach(model, {"fc.bias": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(
        ConfigError, match=r"'fc.bias' has dtype torch.float32 with values other than 0 and 1"
    ):
        MaskSet({"fc.bias": torch.tensor([0.0, 0.5, 1.0])})
    assert MaskSet({"fc.bias": torch.tensor([0, 1, 1])})["fc.bias"].tolist() == [False, True, True]
    with pytest.raises(ConfigError, match=r"must be a tensor, got list"):
        MaskSet({"fc.bias": [0, 1, 1]})
    with pytest.raises(ConfigError, match=r"kept indices for 'fc.bias' must be in 0..2"):
        MaskSet.from_groups(model, {"fc.bias": [3]})
    with pytest.raises(SurgeryError, match=r"shape \(2,\), expected \(4,\) for dimension 0"):
        MaskSet.from_groups(model, {"conv.weight": torch.tensor([True, False])})
    with pytest.raises(ConfigError, match=r"has no dimension 2"):
        MaskSet.from_groups(model, {"fc.weight": [0]}, dim=2)
    with pytest.raises(ConfigError, match=r"threshold for 'conv.weight' must be >= 0, got -1.0"):
        MaskSet.from_threshold(model, -1.0)
    with pytest.raises(ConfigError, match=r"not both"):
        MaskSet.from_threshold(model, {"fc.weight": 0.1}, params=["fc.weight"])
    assert not model.fc.weight._backward_hooks  # failed attaches left nothing behind
