"""`prunekit.prune` and `prunekit prune`: one-shot criteria on any model, and the pruning run folder."""

import json

import pytest
import torch
from torch import nn

import prunekit
from conftest import SYNTHETIC_28
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.measure import cost
from prunekit.models import create


def test_prune_returns_a_smaller_copy_and_leaves_the_input_alone() -> None:
    model = create("resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    pruned = prunekit.prune(model, x, method="l1", ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert pruned.conv1.out_channels == 8 and pruned.layer1[0].conv1.out_channels == 8  # int(0.5·16) removed
    assert pruned(x).shape == (2, 10)
    assert cost(pruned, (3, 32, 32)).macs < cost(model, (3, 32, 32)).macs


def test_prune_keeps_the_largest_l1_filters_of_a_user_model() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([3.0, -1.0, 0.5, -2.0]).view(4, 1, 1, 1))
    pruned = prunekit.prune(model, torch.randn(1, 1, 4, 4), method="l1", ratios="0:0.5")
    # |w| = 3, 1, 0.5, 2 → the two smallest (indices 1, 2) go; kept filters in original order.
    assert pruned[0].weight.flatten().tolist() == [3.0, -2.0]
    assert pruned[2].weight.shape == (2, 2, 1, 1)


def test_prune_with_a_mac_budget_reports_within_one_percent() -> None:
    model = create("lenet5")
    pruned = prunekit.prune(model, torch.randn(1, 1, 28, 28), method="fpgm", target_macs=0.5)
    reached = cost(pruned, (1, 28, 28)).macs / cost(model, (1, 28, 28)).macs
    assert abs(reached - 0.5) <= 0.005


def test_prune_selection_errors() -> None:
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ConfigError, match="give one of ratio / ratios / target_macs / speedup"):
        prunekit.prune(create("lenet5"), x, ratio=0.5, target_macs=0.5)
    with pytest.raises(ConfigError, match="unknown method 'hrnak'"):
        prunekit.prune(create("lenet5"), x, method="hrnak", ratio=0.5)
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)"):
        prunekit.prune(create("lenet5"), x, ratio=1.5)


def test_cli_prune_writes_a_comparison_run_folder(tmp_path, capsys) -> None:
    data = SYNTHETIC_28
    assert main(["train", "--arch", "lenet5", *data, "--epochs", "1", "--out", str(tmp_path / "dense")]) == 0
    out = tmp_path / "pruned"
    argv = [
        "prune",
        str(tmp_path / "dense" / "model.safetensors"),
        "--method",
        "l1",
        "--ratio",
        "0.5",
        "--finetune-epochs",
        "1",
        *data,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["widths_before"]["conv1"] == 20 and summary["widths_after"]["conv1"] == 10
    assert summary["widths_after"]["fc1"] == 250 and summary["widths_after"]["fc2"] == 10  # classes kept
    assert summary["mac_speedup"] == pytest.approx(summary["dense"]["macs"] / summary["pruned"]["macs"])
    assert {"model.safetensors", "report.md", "widths.png", "curves.png", "log.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    reloaded = prunekit.load(out / "model.safetensors")
    assert reloaded.conv1.out_channels == 10
    assert "before fine-tuning" in capsys.readouterr().out
    assert main(["profile", str(out / "model.safetensors"), "--batch-sizes", "1"]) == 0
    assert f"MACs {summary['pruned']['macs']:,}" in capsys.readouterr().out


def test_cli_prune_refuses_a_sparsify_stage_for_one_shot_methods(tmp_path, capsys) -> None:
    data = [
        "--data",
        "synthetic",
        "--data-option",
        "shape=1x28x28",
        "--limit-train",
        "128",
        "--limit-test",
        "64",
    ]
    assert main(["train", "--arch", "lenet5", *data, "--epochs", "1", "--out", str(tmp_path / "d")]) == 0
    argv = [
        "prune",
        str(tmp_path / "d" / "model.safetensors"),
        "--method",
        "l1",
        "--ratio",
        "0.5",
        "--sparsify-epochs",
        "1",
        *data,
        "--out",
        str(tmp_path / "p"),
    ]
    assert main(argv) == 2
    assert "has no sparsify stage" in capsys.readouterr().err


def test_cli_deephoyer_elementwise_keeps_masks_through_finetune_and_file(tmp_path) -> None:
    data = SYNTHETIC_28
    assert (
        main(["train", "--arch", "lenet300_100", *data, "--epochs", "1", "--out", str(tmp_path / "d")]) == 0
    )
    out = tmp_path / "hs"
    argv = [
        "prune",
        str(tmp_path / "d" / "model.safetensors"),
        "--method",
        "deephoyer",
        "--option",
        "regularizer=hoyer_square",
        "--option",
        "decay=0.0002",
        "--option",
        "sensitivity=0.5",
        "--sparsify-epochs",
        "1",
        "--finetune-epochs",
        "1",
        *data,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["widths_after"] == summary["widths_before"]  # element-wise: shapes unchanged
    assert (out / "sparsify" / "log.jsonl").is_file()
    model = prunekit.load(out / "model.safetensors")
    masks = model.prunekit_masks
    assert set(masks) >= {"fc1.weight", "fc2.weight", "fc3.weight"}
    for name, param in model.named_parameters():
        if name in masks:  # the fine-tune kept every pruned weight exactly zero
            assert torch.all(param[~masks[name]] == 0)
    masked_out = sum(int((~mask).sum()) for mask in masks.values())
    assert summary["sparsity"]["pruned"] == masked_out
    # |w| < 0.5·std removes about 0.5/√3 ≈ 29 % of near-uniform (Kaiming-uniform) weights.
    assert 0.2 < masked_out / summary["sparsity"]["total"] < 0.4
