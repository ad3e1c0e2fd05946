"""DeepHoyer through the CLI on real MNIST: train → regularise (Group-HS) → prune structurally → fine-tune."""

import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.methods.deephoyer.regularizers import REGULARIZERS


def _data(root) -> list[str]:
    return [
        "--data",
        "mnist",
        "--data-root",
        str(root),
        "--no-download",
        "--limit-train",
        "1024",
        "--limit-test",
        "512",
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
        "--device",
        "cpu",
        "--latency-batches",
        "1",
    ]


@pytest.fixture(scope="module")
def dense_lenet5(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dh_dense")
    argv = ["train", "--arch", "lenet5", *_data(shared_data), "--epochs", "1", "--lr", "0.001"]
    assert main([*argv, "--out", str(out)]) == 0
    return out / "model.safetensors"


def test_group_hs_structural_prune_end_to_end(dense_lenet5, shared_data, tmp_path, capsys) -> None:
    out = tmp_path / "pruned"
    # decay 0.01 and std ratio 0.8 on one regularised epoch of 16 steps: fc2 columns fall below the
    # threshold, so fc1 neurons that feed nothing are removed physically (16 of 500 when this was written).
    argv = [
        "prune",
        str(dense_lenet5),
        "--method",
        "deephoyer",
        "--option",
        "regularizer=group_hs",
        "--option",
        "structural=true",
        "--option",
        "decay=0.01",
        "--option",
        "sensitivity=0.8",
        *_data(shared_data),
        "--sparsify-epochs",
        "1",
        "--sparsify-lr",
        "0.001",
        "--finetune-epochs",
        "1",
        "--finetune-lr",
        "0.001",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "pruned top-1" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "deephoyer"
    before, after = summary["widths_before"], summary["widths_after"]
    assert before == {"conv1": 20, "conv2": 50, "fc1": 500, "fc2": 10}
    assert set(after) == set(before)
    assert all(after[name] <= before[name] for name in before)
    assert any(after[name] < before[name] for name in before), after
    assert after["fc2"] == 10  # the classes stay
    assert summary["pruned"]["params"] < summary["dense"]["params"]
    for top1 in (
        summary["dense"]["top1"],
        summary["pruned"]["top1_before_finetune"],
        summary["pruned"]["top1"],
    ):
        assert 0.0 <= top1 <= 100.0
    # One epoch on 1024 images is far from converged, but the pruned net must still beat chance clearly.
    assert summary["pruned"]["top1"] > 30.0

    model = prunekit.load(out / "model.safetensors")
    widths = {
        name: m.out_features if hasattr(m, "out_features") else m.out_channels
        for name, m in model.named_children()
        if hasattr(m, "weight")
    }
    assert widths == after
    masks = model.prunekit_masks
    assert masks, "element-wise zeros of the thresholded model must be kept as masks"
    params = dict(model.named_parameters())
    frozen = 0
    for name, mask in masks.items():
        assert mask.shape == params[name].shape
        assert torch.all(params[name].detach()[~mask] == 0), name
        frozen += int((~mask).sum())
    assert frozen > 0
    assert summary["sparsity"]["nonzero"] < summary["sparsity"]["total"]


def test_unknown_regularizer_exits_2_and_lists_the_valid_ones(
    dense_lenet5, shared_data, tmp_path, capsys
) -> None:
    argv = [
        "prune",
        str(dense_lenet5),
        "--method",
        "deephoyer",
        "--option",
        "regularizer=hoyer2",
        *_data(shared_data),
        "--sparsify-epochs",
        "1",
        "--out",
        str(tmp_path / "bad"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "hoyer2" in err
    for name in REGULARIZERS:
        assert name in err
    assert "Traceback" not in err
