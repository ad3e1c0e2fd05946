"""`trp` and `nuclear` end to end through `prunekit prune`: sparsify with the training hooks, decompose,
report ranks per layer, and a model file that loads back."""

from __future__ import annotations

import json

import torch
from torch import nn

import prunekit
from prunekit import model_file
from prunekit.cli import main
from prunekit.measure import cost
from prunekit.models import create
from prunekit.surgery import LowRankConv2d


def test_nuclear_vh_on_synthetic_resnet20(tmp_path) -> None:
    from conftest import SYNTHETIC_28

    torch.manual_seed(0)
    model_file.save(
        create("resnet20", shortcut="B", in_channels=1),
        tmp_path / "dense.safetensors",
        info={"dataset": "synthetic"},
    )
    argv = ["prune", str(tmp_path / "dense.safetensors"), "--method", "nuclear", "--option", "scheme=VH"]
    argv += [
        *SYNTHETIC_28,
        "--limit-train",
        "128",
        "--limit-test",
        "64",
        "--threads",
        "1",
        "--latency-batches",
        "1",
    ]
    argv += ["--sparsify-epochs", "1"]
    argv += ["--sparsify-lr", "0.01", "--finetune-epochs", "0", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    details = summary["nuclear"]
    assert (details["scheme"], details["rule"], details["threshold"]) == ("VH", "energy", 0.15)
    assert len(details["ranks"]) == 16 and details["left_dense"] == {}
    # VH full rank of a c→n 3×3 conv is min(3c, 3n): 48 / 96 / 192 by stage.
    assert {details["full_ranks"][n] for n in ("layer1.0.conv1", "layer2.1.conv1", "layer3.2.conv2")} == {
        48,
        96,
        192,
    }
    small = prunekit.load(tmp_path / "p" / "model.safetensors")
    for name, rank in details["ranks"].items():
        layer = small.get_submodule(name)
        assert isinstance(layer, LowRankConv2d) and layer.rank == rank < details["full_ranks"][name]
    assert type(small.get_submodule("layer2.0.conv1")) is nn.Conv2d  # strided: kept whole (spec §1)
    assert summary["pruned"]["macs"] == cost(small, (1, 28, 28)).macs < summary["dense"]["macs"]


def test_trp_from_scratch_on_real_fashion_mnist_needs_no_fine_tuning(shared_data, tmp_path) -> None:
    """TRP training from scratch (as the paper's CIFAR runs), then the release's value-threshold
    decomposition: the decomposed net scores what the trained net scored (the "no fine-tuning" claim)."""
    torch.manual_seed(0)
    model_file.save(create("lenet5"), tmp_path / "init.safetensors", info={"dataset": "fashion_mnist"})
    argv = ["prune", str(tmp_path / "init.safetensors"), "--method", "trp"]
    argv += ["--data", "fashion_mnist", "--data-root", str(shared_data), "--no-download"]
    argv += ["--limit-train", "2048", "--limit-test", "1000", "--batch-size", "64", "--optimizer", "adam"]
    argv += ["--device", "cpu", "--threads", "1", "--latency-batches", "1"]
    argv += ["--sparsify-epochs", "1", "--sparsify-lr", "0.001", "--finetune-epochs", "0"]
    assert main([*argv, "--out", str(tmp_path / "trp")]) == 0
    summary = json.loads((tmp_path / "trp" / "summary.json").read_text())
    log = [
        json.loads(line) for line in (tmp_path / "trp" / "sparsify" / "log.jsonl").read_text().splitlines()
    ]
    trained_top1 = [r for r in log if r.get("kind") == "epoch"][-1]["val_top1"]
    ranks = summary["trp"]["ranks"]
    assert list(ranks) == ["conv2"]  # conv1 is the stem (spec §1)
    assert ranks["conv2"] < 45  # below 45 of 50 the NC pair costs less than the 5×5 conv
    assert trained_top1 > 55  # one epoch of 2,048 real images
    assert abs(summary["pruned"]["top1_before_finetune"] - trained_top1) <= 1.0
    assert summary["pruned"]["macs"] < summary["dense"]["macs"]
