"""Network Slimming on models where some prunable layers have no BatchNorm right after them: those layers
(and the layers coupled with them) keep their channels and are listed as not eligible; the rest is
slimmed, budgets are still met, and a model without any eligible layer is refused by name."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.measure import cost
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.models.preresnet import PreResNet

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class Mixed(nn.Module):
    """conv_a feeds a BatchNorm with known scales; conv_b feeds a ReLU; conv_c and conv_d are added, and
    only conv_c has a BatchNorm, so the pair keeps its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 6, 3, padding=1)
        self.conv_c, self.bn_c = nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5)
        self.conv_d = nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(5, 2)
        with torch.no_grad():
            self.bn_a.weight.copy_(torch.tensor([0.1, 0.9, 0.5, 0.2]))
            self.bn_c.weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05]))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))
        return self.head((self.bn_c(self.conv_c(x)) + self.conv_d(x)).mean((2, 3)))


def test_only_layers_with_a_batchnorm_take_part_and_the_rest_are_named() -> None:
    method = create_method("slimming", ratio=0.5)
    with pytest.warns(UserWarning, match=r"keeps every channel of 3 layer\(s\).*conv_b, conv_c, conv_d"):
        pruned = method.prune(Mixed(), X)
    # Only conv_a takes part: 4 channels, int(0.5 * 4) = 2 go, the smallest |γ| (0.1 at 0, 0.2 at 3), even
    # though conv_c's scales are all smaller: its partner conv_d has no BatchNorm.
    assert pruned.model.conv_a.out_channels == 2
    assert torch.equal(pruned.model.bn_a.weight.detach(), torch.tensor([0.9, 0.5]))
    assert (pruned.model.conv_b.out_channels, pruned.model.conv_c.out_channels) == (6, 5)
    assert pruned.details == {
        "pruned_layers": 1,
        "not_eligible": {
            "conv_b": "no BatchNorm reads its output directly",
            "conv_c": "coupled with 'conv_d', for which no BatchNorm reads its output directly",
            "conv_d": "no BatchNorm reads its output directly",
        },
    }


def test_preresnet_details_list_every_residual_output() -> None:
    # `Pruned.details` is what the run summary writes under the method's name (summary["slimming"]).
    with pytest.warns(UserWarning, match="keeps every channel of 6 layer"):
        details = create_method("slimming", ratio=0.25).prune(_preresnet(), X).details
    # A pre-activation ResNet's residual outputs (stem, each conv2, each projection) go to an add, never
    # straight into a BatchNorm; each block's conv1 feeds bn2.
    assert set(details["not_eligible"]) == {
        "conv1", "layer1.0.conv2", "layer2.0.conv2", "layer2.0.shortcut.0", "layer3.0.conv2",
        "layer3.0.shortcut.0",
    }  # fmt: skip
    assert details["pruned_layers"] == 3


def _preresnet() -> nn.Module:
    model = PreResNet(1, bottleneck=False).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.1  # a trained network's scales
    return model


def test_preresnet_inner_convs_are_slimmed_and_the_residual_widths_kept() -> None:
    model = _preresnet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = prunekit.prune(model, X, method="slimming", ratio=0.3)
    inner = [f"layer{s}.0.conv1" for s in (1, 2, 3)]
    # The three inner convs (16, 32, 64 channels) are the only participants: int(0.3 * 112) = 33 go.
    widths = [pruned.get_submodule(name).out_channels for name in inner]
    assert sum(widths) == 112 - 33
    assert [pruned.get_submodule(f"layer{s}.0.conv2").out_channels for s in (1, 2, 3)] == [16, 32, 64]
    with torch.no_grad():
        assert pruned(X).shape == (4, 10)


def test_a_mac_budget_is_met_through_the_eligible_layers_alone() -> None:
    model = _preresnet()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    dense = cost(model, (3, 32, 32)).macs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = prunekit.prune(model, x[:1], method="slimming", target_macs=0.8, calib=x)
    reached = cost(pruned, (3, 32, 32)).macs / dense
    assert abs(reached - 0.8) <= 0.02 * 0.8, reached


def test_a_model_without_any_batchnorm_is_refused_naming_its_layers() -> None:
    with pytest.raises(ConfigError, match=r"none of the selected layers has one: conv1, conv2, fc1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            create_method("slimming", ratio=0.3).plan(create("lenet5"), torch.randn(2, 1, 28, 28))


def test_a_glob_that_selects_only_batchnorm_layers_warns_about_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = create_method("slimming", ratio=0.5, layers="conv_a").plan(Mixed(), X)
    assert plan == {"conv_a": [1, 2]}
