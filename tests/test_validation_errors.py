"""Options that always act and errors that are one line: data recorded in the model file, distillation on
prune/finetune, runs that remove nothing, the run's warning channel, and no tracebacks."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SYNTHETIC_28
from prunekit import model_file
from prunekit.cli import main
from prunekit.pipeline import DataSpec
from prunekit.train.losses import training_losses

TINY = [*SYNTHETIC_28, "--epochs", "1", "--lr", "0.05", "--threads", "1"]


@pytest.fixture(scope="module")
def raw_pixels(tmp_path_factory) -> Path:
    """LeNet-5 trained on unnormalised synthetic 1x28x28 pixels: the file records normalize: false."""
    out = tmp_path_factory.mktemp("raw") / "run"
    assert main(["train", "--arch", "lenet5", *TINY, "--no-normalize", "--out", str(out)]) == 0
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_model_file_supplies_dataset_shape_and_normalisation(raw_pixels) -> None:
    info = model_file.load(raw_pixels / "model.safetensors").prunekit_info
    assert (info["dataset"], info["normalize"], info["data_options"]) == (
        "synthetic",
        False,
        {"shape": [1, 28, 28]},
    )
    spec = DataSpec(limit_train=64, batch_size=32, root="/data").for_model(info, "m")
    assert (spec.name, spec.normalize, spec.options) == ("synthetic", False, {"shape": [1, 28, 28]})
    assert (spec.limit_train, spec.batch_size, spec.root) == (64, 32, "/data")
    # Files written before data_options were recorded: a synthetic model's input shape stands in.
    old = {"dataset": "synthetic", "input_shape": [1, 28, 28]}
    assert (
        DataSpec().for_model(old, "m").options == {"shape": (1, 28, 28)}
        and DataSpec().for_model(old, "m").normalize
    )
    assert (
        DataSpec(normalize=False).for_model({"dataset": "mnist", "normalize": True}, "m").normalize is False
    )


def test_prune_without_data_honours_every_data_option(raw_pixels, tmp_path) -> None:
    out = tmp_path / "p"
    argv = ["prune", str(raw_pixels / "model.safetensors"), "--method", "l1", "--ratio", "0.5"]
    argv += ["--limit-train", "64", "--limit-test", "32", "--batch-size", "16", "--no-download"]
    assert main([*argv, "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (data["name"], data["normalize"], data["options"]) == ("synthetic", False, {"shape": [1, 28, 28]})
    assert (data["limit_train"], data["limit_test"], data["batch_size"], data["download"]) == (
        64,
        32,
        16,
        False,
    )


def test_eval_without_data_uses_the_recorded_normalisation(raw_pixels, capsys) -> None:
    summary = json.loads((raw_pixels / "summary.json").read_text())
    capsys.readouterr()
    assert (
        main(["eval", str(raw_pixels / "model.safetensors"), "--limit-test", "128", "--device", "cpu"]) == 0
    )
    # The training run's last validation used the same 128 unnormalised test images.
    out = capsys.readouterr().out
    assert f"top-1 {summary['top1']:.2f} %" in out and "(128 images)" in out


def test_distillation_loss_by_hand() -> None:
    # Student logits (0, 0), teacher (ln 3, 0), T = 2: p_t = (√3, 1)/(√3 + 1), p_s = (½, ½).
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    loss, kd = training_losses(student, torch.tensor([0]), teacher_logits=teacher, temperature=2.0, alpha=0.9)
    assert kd.item() == pytest.approx(4 * kl, rel=1e-6)  # 0.14544
    assert loss.item() == pytest.approx(0.9 * 4 * kl + 0.1 * math.log(2), rel=1e-6)
    assert training_losses(student, torch.tensor([0]))[1] is None


@pytest.mark.parametrize("command", ["finetune", "prune"])
def test_teacher_distils_during_fine_tuning_and_the_log_shows_it(raw_pixels, tmp_path, command) -> None:
    model = str(raw_pixels / "model.safetensors")
    common = ["--limit-train", "64", "--device", "cpu", "--threads", "1"]
    if command == "finetune":  # the student is a pruned copy: a copy of the teacher would match it exactly
        assert main(["prune", model, "--method", "l1", *common, "--out", str(tmp_path / "p")]) == 0
        argv = [command, str(tmp_path / "p" / "model.safetensors"), *common, "--epochs", "2"]
    else:
        argv = [command, model, *common, "--method", "l1", "--finetune-epochs", "2"]
    logs = {}
    for name, teacher in (("kd", ["--teacher", model]), ("plain", [])):
        assert main([*argv, *teacher, "--out", str(tmp_path / name)]) == 0
        logs[name] = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert len(logs["kd"]) == 2 and all(r["train_kd_loss"] > 0 for r in logs["kd"])
    assert all("train_kd_loss" not in r for r in logs["plain"])
    assert yaml.safe_load((tmp_path / "kd" / "config.yaml").read_text())["teacher"] == model


def test_a_pruning_that_removes_nothing_fails_unless_allowed(raw_pixels, tmp_path, capsys) -> None:
    argv = ["prune", str(raw_pixels / "model.safetensors"), "--method", "l1", "--ratio", "0.001"]
    argv += ["--limit-train", "64", "--device", "cpu", "--threads", "1"]
    # 0.1 % of 20, 50 and 500 channels rounds down to no channel at all.
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = one_line_error(capsys)
    assert "method 'l1' removed nothing" in err and "--ratio" in err and "--allow-noop" in err
    assert not (tmp_path / "a").exists()
    assert main([*argv, "--allow-noop", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["mac_speedup"] == 1.0 and summary["layers"]["pruned"] == []


def test_the_summary_names_the_eligible_and_the_pruned_layers(raw_pixels, tmp_path) -> None:
    out = tmp_path / "p"
    argv = ["prune", str(raw_pixels / "model.safetensors"), "--method", "l1", "--ratio", "0.5"]
    assert main([*argv, "--limit-train", "64", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # The classifier's output layer keeps its classes; every hidden layer, conv or linear, is eligible.
    assert summary["layers"] == {"eligible": ["conv1", "conv2", "fc1"], "pruned": ["conv1", "conv2", "fc1"]}
    assert summary["widths_after"] == {"conv1": 10, "conv2": 25, "fc1": 250, "fc2": 10}


def test_hrank_calibration_shortfall_goes_through_the_run_warning_channel(
    raw_pixels, tmp_path, capsys
) -> None:
    out = tmp_path / "h"
    argv = ["prune", str(raw_pixels / "model.safetensors"), "--method", "hrank", "--ratio", "0.5"]
    assert main([*argv, "--limit-train", "64", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    expected = "HRank ranked feature maps on 64 images, fewer than n_images=768"
    assert f"prunekit: warning: {expected}" in err and "UserWarning" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [expected]
    # A uniform ratio reaches the hidden linear layer for HRank as for L1 (widths as in the L1 test).
    assert summary["layers"] == {"eligible": ["conv1", "conv2", "fc1"], "pruned": ["conv1", "conv2", "fc1"]}
    assert summary["widths_after"] == {"conv1": 10, "conv2": 25, "fc1": 250, "fc2": 10}


def test_hrank_ranks_a_hidden_unit_by_how_often_it_fires() -> None:
    from prunekit.methods.hrank.linear import hidden_linears, linear_ranks

    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [2.0, -3.0]])
    # Unit 0 fires on x0, x1, x3; unit 1 on x0 only; unit 2 (−x0 − x1 > 0) on x2 and x3. Three images
    # only (n_images=3), in batches of two.
    ranks = linear_ranks(net, x, ["0"], n_images=3, batch_size=2)
    torch.testing.assert_close(ranks["0"], torch.tensor([2 / 3, 1 / 3, 1 / 3]))
    assert linear_ranks(net, x, ["0"], n_images=8, batch_size=8)["0"].tolist() == [0.75, 0.25, 0.5]
    assert (
        hidden_linears(net, ["0"]) == ["0"]
        and hidden_linears(torch.nn.Sequential(torch.nn.ReLU()), ["0"]) == []
    )


def test_unwritable_out_is_refused_before_any_work(raw_pixels, tmp_path, capsys) -> None:
    model = str(raw_pixels / "model.safetensors")
    for out in ("/proc/x", str(raw_pixels / "model.safetensors" / "sub")):
        assert main(["finetune", model, "--epochs", "1", "--out", out]) == 2
        assert f"cannot write --out {out}" in one_line_error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(raw_pixels, tmp_path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["finetune", str(raw_pixels / "model.safetensors"), "--out", str(locked / "run")]) == 2
    assert "cannot write --out" in one_line_error(capsys)


def test_shapes_that_do_not_fit_are_one_line_errors(raw_pixels, capsys) -> None:
    model = str(raw_pixels / "model.safetensors")
    assert main(["profile", model, "--input-shape", "3x32x32", "--batch-sizes", "1", "--threads", "1"]) == 2
    assert "with --input-shape: the model cannot run on 3x32x32 images" in one_line_error(capsys)
    assert main(["profile", "lenet5", "--input-shape", "1x8x8", "--threads", "1"]) == 2
    assert "cannot run on 1x8x8 images" in one_line_error(capsys)
    argv = ["eval", model, "--data", "synthetic", "--data-option", "shape=3x32x32", "--device", "cpu"]
    assert main(argv) == 2
    assert "on synthetic: the model cannot run on 3x32x32 images" in one_line_error(capsys)


def test_missing_data_names_flags_that_exist(tmp_path, capsys) -> None:
    argv = ["train", "--arch", "lenet5", "--data", "mnist", "--data-root", str(tmp_path), "--no-download"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "without --no-download" in err and " --download " not in err
    assert not (tmp_path / "o").exists()


def test_an_unexpected_exception_is_one_line_that_says_it_is_a_bug(monkeypatch, capsys) -> None:
    import prunekit.cli as cli

    def chunked_model_failure(args):
        raise RuntimeError("stack expects each tensor to be equal size\nmore detail")

    monkeypatch.setattr(cli, "cmd_list", chunked_model_failure)
    monkeypatch.delenv("PRUNEKIT_TRACEBACK", raising=False)
    assert main(["list", "models"]) == 2
    err = one_line_error(capsys)
    assert "internal error (RuntimeError at test_validation_errors.py:" in err
    assert "stack expects each tensor to be equal size)" in err and "please report it" in err
    monkeypatch.setenv("PRUNEKIT_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        main(["list", "models"])


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"finetune": {"epochs": 1, "learning_rate": 0.1}}, "unknown training option 'learning_rate'"),
        ({"method": {"name": "l1", "options": {"sead": 1}}}, "sead"),
    ],
)
def test_recipe_mistakes_fail_before_the_dense_stage(tmp_path, stage, message, capsys) -> None:
    recipe = {
        "name": "tiny",
        "model": {"arch": "lenet5"},
        "data": {"dataset": "synthetic"},
        "dense": {"epochs": 1, "lr": 0.05},
        "method": {"name": "l1", "options": {"rates": "0.5"}},
        **stage,
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
