"""Regressions found by the third-party model sweep (benchmarks/third_party_models.py, issue 13).

Each test is a small hand-written model reproducing the cause seen in a timm architecture; none needs timm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.measure import cost


class ResidualOverConcat(nn.Module):
    """Inception-ResNet-v2's `mixed_7a` followed by `block8`: a concatenation of a narrow and a wide branch is
    added to a full-width layer, so the branches are members of one coupled group that own different units."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1, bias=False)
        self.b = nn.Conv2d(3, 6, 1, bias=False)
        self.c = nn.Conv2d(3, 8, 1, bias=False)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            # L1 per unit = |a or b row| + |c row|; c's rows are equal (0.3 each), so the branches decide:
            # a's rows 0.03 and 0.06 are the two weakest units, b's rows 0.3, 0.6, ..., 1.8.
            self.a.weight.copy_(torch.tensor([0.01, 0.02]).view(2, 1, 1, 1).expand(2, 3, 1, 1))
            self.b.weight.copy_(torch.arange(1.0, 7.0).mul(0.1).view(6, 1, 1, 1).expand(6, 3, 1, 1))
            self.c.weight.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], 1) + self.c(x)))


def test_a_branch_of_a_coupled_concatenation_keeps_its_best_channel() -> None:
    # 8 units, ratio 0.5: the 4 weakest are a's two (0.33, 0.36) and b's first two (0.6, 0.9). a would be
    # left with nothing, so its better unit (a row 1, unit 1) stays and the weakest other kept unit (b row 2,
    # unit 4) goes instead: still 4 units removed. a keeps row 1, b rows 3-5, c the units 1, 5, 6, 7.
    model = ResidualOverConcat().eval()
    pruned = prunekit.prune(model, torch.randn(1, 3, 4, 4), "l1", ratio=0.5)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.out_channels) == (1, 3, 4)
    assert torch.equal(pruned.a.weight, model.a.weight[1:2])
    assert torch.equal(pruned.b.weight, model.b.weight[3:])
    assert torch.equal(pruned.c.weight, model.c.weight[[1, 5, 6, 7]])
    assert pruned.head.in_channels == 4


def test_a_mac_budget_over_a_coupled_concatenation_keeps_every_branch() -> None:
    # Per image at 4x4, 1x1 convs: a 2*3*16 + b 6*3*16 + c 8*3*16 + head 4*8*16 = 1280 MACs. At 0.25 six of
    # the eight units go (the budget's trial surgery emptied b before); a keeps unit 1 in place of unit 6,
    # leaving a 1, b 1 (row 5), c 2 (units 1, 7): 48 + 48 + 96 + 4*2*16 = 320 = 0.25 * 1280.
    model = ResidualOverConcat().eval()
    pruned = prunekit.prune(model, torch.randn(1, 3, 4, 4), "l1", target_macs=0.25)
    assert torch.equal(pruned.a.weight, model.a.weight[1:2])
    assert torch.equal(pruned.b.weight, model.b.weight[5:])
    assert torch.equal(pruned.c.weight, model.c.weight[[1, 7]])
    assert cost(pruned, (3, 4, 4)).macs == 320


class StandardisedConv(nn.Conv2d):
    """timm's ScaledStdConv2d (NF-ResNet): the weight is standardised per output channel in every forward, so
    removing an input channel changes the kept filters; the engine refuses every such layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.weight.reshape(1, self.out_channels, -1)
        w = F.batch_norm(flat, None, None, training=True).reshape_as(self.weight)
        return self._conv_forward(x, w, self.bias)


def test_a_model_with_no_prunable_layer_is_refused_not_returned_unchanged() -> None:
    net = nn.Sequential(StandardisedConv(3, 8, 3, padding=1), nn.ReLU(), StandardisedConv(8, 4, 3, padding=1))
    with pytest.raises(
        ConfigError, match=r"nothing was pruned: none of the model's 2 conv/linear layers"
    ) as err:
        prunekit.prune(net, torch.randn(1, 3, 8, 8), "l1", ratio=0.3)
    # The engine's reason for the hidden layer comes first, the classifier's last.
    message = str(err.value)
    assert message.index("'0': its channels pass through") < message.index("'2': its output channels are")
    with pytest.raises(ConfigError, match=r"target_macs=0.5 cannot be met: none of the model's 2 conv"):
        prunekit.prune(net, torch.randn(1, 3, 8, 8), "l1", target_macs=0.5)


def test_an_example_input_the_model_cannot_run_is_a_prunekit_error() -> None:
    # Inception-ResNet-v2 at 64x64: a 3x3 valid conv meets a 2x2 map. The trace used to end in torch's raw
    # RuntimeError; the model's own failure on the input is now named as the user's error.
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with pytest.raises(ConfigError, match=r"does not run on the example input of shape \(1, 3, 4, 4\)"):
        prunekit.prune(net, torch.randn(1, 3, 4, 4), "l1", ratio=0.5)
    assert prunekit.prune(net, torch.randn(1, 3, 6, 6), "l1", ratio=0.5)[0].out_channels == 4
