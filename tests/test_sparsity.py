from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn

from prunekit.measure.sparsity import sparsity_report


class Hand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 2)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(5, 3, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()  # BN zeros too: they must not be counted
            w = self.conv.weight
            w[0, 0, 0, 0], w[0, 2, 1, 1] = 1.0, -2.0  # filter 0: 2 nonzeros, input channels 0 and 2
            w[2, 0] = 1.0  # filter 2: 4 nonzeros, input channel 0
            w[3, 0, 1, 0] = 0.5  # filter 3: 1 nonzero; filter 1 and input channel 1 are dead
            self.conv.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 2.0]))  # filter 1 has only a bias
            self.fc.weight[0, 0] = 1.0
            self.fc.weight[2, 2], self.fc.weight[2, 4] = 3.0, 4.0  # rows 0, 2 alive; columns 0, 2, 4


def test_per_layer_counts_by_hand() -> None:
    conv, fc = sparsity_report(Hand()).layers
    assert (conv.name, conv.kind, conv.shape) == ("conv", "conv", (4, 3, 2, 2))
    assert (conv.nonzero, conv.total, conv.bias_nonzero, conv.bias_total) == (7, 48, 2, 4)
    assert conv.pruned_pct == pytest.approx(100 * 41 / 48)
    assert (conv.nonzero_filters, conv.filters, conv.nonzero_in_channels, conv.in_channels) == (3, 4, 2, 3)
    assert (fc.name, fc.kind, fc.shape) == ("fc", "linear", (3, 5))
    assert (fc.nonzero, fc.total, fc.bias_nonzero, fc.bias_total) == (3, 15, 0, 0)
    assert (fc.nonzero_filters, fc.filters, fc.nonzero_in_channels, fc.in_channels) == (2, 3, 3, 5)


def test_totals_include_biases() -> None:
    report = sparsity_report(Hand())
    assert (report.weight_nonzero, report.weight_total) == (10, 63)
    assert (report.nonzero, report.total, report.pruned) == (12, 67, 55)
    assert report.pruned_pct == pytest.approx(100 * 55 / 67)
    assert report.compression == pytest.approx(67 / 12)
    # (in · out) pairs alive: conv 2·3, fc 3·2 of conv 3·4 + fc 5·3
    assert report.channel_pair_sparsity == pytest.approx(1 - 12 / 27)


def test_grouped_and_depthwise_input_channels() -> None:
    grouped = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    depthwise = nn.Conv2d(3, 3, 3, groups=3, bias=False)
    with torch.no_grad():
        grouped.weight.zero_()
        grouped.weight[0, 1] = 1.0  # group 0, position 1 -> input channel 1
        grouped.weight[3, 0] = 1.0  # group 1, position 0 -> input channel 2
        depthwise.weight.zero_()
        depthwise.weight[1, 0, 2, 2] = 1.0
    g, d = sparsity_report(nn.ModuleDict({"g": grouped, "d": depthwise})).layers
    assert (g.nonzero_filters, g.nonzero_in_channels, g.in_channels) == (2, 2, 4)
    assert (d.nonzero, d.total, d.nonzero_filters, d.nonzero_in_channels, d.in_channels) == (1, 27, 1, 1, 3)


def test_to_dict_is_json_and_complete() -> None:
    data = json.loads(json.dumps(sparsity_report(Hand()).to_dict()))
    assert "totals include biases" in data["convention"]
    assert data["layers"][0] == {
        "name": "conv",
        "kind": "conv",
        "shape": [4, 3, 2, 2],
        "nonzero": 7,
        "total": 48,
        "pruned_pct": pytest.approx(100 * 41 / 48),
        "bias_nonzero": 2,
        "bias_total": 4,
        "nonzero_filters": 3,
        "filters": 4,
        "nonzero_in_channels": 2,
        "in_channels": 3,
    }
    assert (data["nonzero"], data["total"], data["weight_nonzero"], data["weight_total"]) == (12, 67, 10, 63)
    assert data["compression"] == pytest.approx(67 / 12)


def _render(report) -> str:
    console = Console(record=True, width=250)
    console.print(report.table())
    return console.export_text()


def test_table_rows_and_caption() -> None:
    text = _render(sparsity_report(Hand()))
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]
    assert rows == [
        ["conv", "4×3×2×2", "7", "48", "85.42%", "2/4", "3/4", "2/3"],
        ["fc", "3×5", "3", "15", "80.00%", "-", "2/3", "3/5"],
        ["total (weights)", "", "10", "63", "84.13%", "", "", ""],
    ]
    caption = " ".join(text.split())
    assert "alive 12 / total 67 (weights + biases), pruned 55 (82.09%), compression 5.58x" in caption


def test_all_zero_model_has_unbounded_compression() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    report = sparsity_report(model)
    assert (report.nonzero, report.total, report.compression) == (0, 6, None)
    assert report.layers[0].name == ""
    assert "compression unbounded (all zero)" in " ".join(_render(report).split())
