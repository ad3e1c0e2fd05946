"""The CLI end to end: run folders, resume, config files, and errors without tracebacks."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import SYNTHETIC_28
from prunekit import model_file as checkpoint
from prunekit.cli import main

TINY = [*SYNTHETIC_28, "--epochs", "2", "--lr", "0.05"]


def test_help_lists_commands_and_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "profile", "demo"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "torchrun --nproc-per-node=2 -m prunekit train" in capsys.readouterr().out


def test_train_writes_a_complete_run_folder_then_eval_and_profile(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--arch", "lenet5", *TINY, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "config.yaml",
        "log.jsonl",
        "summary.json",
        "model.safetensors",
        "report.md",
        "curves.png",
    } <= names
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log if row.get("kind") == "epoch"] == [1, 2]
    assert summary["top1"] == pytest.approx(log[-1]["val_top1"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["arch"] == "lenet5" and config["train"]["epochs"] == 2
    model = checkpoint.load(out / "model.safetensors")
    assert model.prunekit_info["top1"] == pytest.approx(summary["top1"])
    assert summary["macs"] > 0 and summary["latency_ms"]
    capsys.readouterr()

    assert (
        main(
            [
                "eval",
                str(out / "model.safetensors"),
                "--data",
                "synthetic",
                "--data-option",
                "shape=1x28x28",
                "--limit-test",
                "128",
            ]
        )
        == 0
    )
    assert f"top-1 {summary['top1']:.2f} %" in capsys.readouterr().out
    assert main(["profile", str(out / "model.safetensors"), "--batch-sizes", "1", "--layers"]) == 0
    text = capsys.readouterr().out
    assert f"MACs {summary['macs']:,}" in text and "conv1" in text


def test_yaml_config_fills_options_and_command_line_wins(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"arch": "lenet300_100", "epochs": 5, "optimizer": "adam", "lr": 0.001}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), *TINY, "--out", str(out)]) == 0  # TINY says --epochs 2
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["arch"] == "lenet300_100"
    assert config["train"]["optimizer"] == "adam" and config["train"]["epochs"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--arch", "resnet57", "--data", "synthetic"],
            "unknown model 'resnet57'; valid models: .*resnet56",
        ),
        (["train", "--arch", "lenet5", "--data", "cifar11"], "unknown dataset 'cifar11'"),
        (["train", "--arch", "lenet5", "--data", "synthetic", "--optimizer", "adagrad"], "adagrad"),
        (
            [
                "train",
                "--arch",
                "lenet5",
                "--data",
                "synthetic",
                "--schedule",
                "piecewise",
                "--piecewise",
                "0:0.1,x",
            ],
            "0:0.1,x",
        ),
        (["train", "--config", "/nonexistent.yaml"], "does not exist"),
        (
            ["train", "--arch", "lenet5", "--data", "synthetic", "--limit-train", "64"],
            "lenet5 on synthetic: the model cannot run on 3x32x32 images",
        ),
        (["train", "--arch", "lenet5", "--data", "synthetic", "--data-option", "shape"], "KEY=VALUE"),
        (["eval", "/nonexistent/model.safetensors", "--data", "synthetic"], "no model file"),
        (["profile", "resnet57"], "unknown model"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and "Traceback" not in err
    assert __import__("re").search(message, err)


def test_unknown_yaml_key_is_refused(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("arch: lenet5\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg), "--data", "synthetic", "--out", str(tmp_path / "o")]) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err


def test_module_entry_point_prints_errors_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit", "profile", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown model 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_same_seed_same_run(tmp_path) -> None:
    for name in ("a", "b"):
        assert main(["train", "--arch", "lenet5", *TINY, "--epochs", "1", "--out", str(tmp_path / name)]) == 0
    a, b = (checkpoint.load(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
