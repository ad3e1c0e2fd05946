"""`prunekit prune` runs a method's sparsify stage with the method's declared schedule (`Method.schedule`,
what `prunekit compare` runs) wherever the command line does not say otherwise, and refuses a stage
length that would be ignored."""

from __future__ import annotations

import json
import math

import pytest

from prunekit import pipeline
from prunekit.cli import main
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import create_method, method_class
from prunekit.pipeline import sparsify_config
from prunekit.train import TrainConfig

# 9 steps of TPP on LeNet-5: λ = 0.25·t reaches τ = 1 at t = 4, then 4 held steps + 1 (tests/test_tpp_cli.py).
TPP_OPTIONS = ["--option=update_reg_interval=1", "--option=reg_granularity=0.25"]
TPP_OPTIONS += ["--option=stabilize_reg_interval=4", "--option=zero_out_interval=1"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from conftest import SYNTHETIC_28

    out = tmp_path_factory.mktemp("schedules_dense")
    argv = ["train", "--arch", "lenet5", *SYNTHETIC_28, "--epochs", "1", "--latency-batches", ""]
    assert main([*argv, "--out", str(out)]) == 0
    return out / "model.safetensors"


class Captured(PrunekitError):
    pass


@pytest.fixture
def captured(monkeypatch):
    """What `prunekit prune` hands to `prune_run` (no data is read, nothing trains)."""
    seen: dict = {}

    def fake(checkpoint, spec, data, out, **kwargs):
        seen.update(spec=spec, **kwargs)
        raise Captured("captured")

    monkeypatch.setattr(pipeline, "prune_run", fake)

    def run(*argv: str) -> dict:
        assert main(["prune", "m.safetensors", *argv]) == 2
        return seen

    return run


def test_declared_optimiser_settings_fill_what_the_command_line_leaves_open(captured) -> None:
    # TPP declares SGD, lr 1e-3, momentum 0.9, a constant lr; the command's own defaults are lr 0.01 and
    # a cosine schedule, which the CLI used to hand to the sparsify stage.
    assert method_class("tpp").schedule.sparsify == {
        "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "schedule": "constant",
    }  # fmt: skip
    cfg = captured("--method", "tpp", "--sparsify-epochs", "auto")["sparsify"]
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.schedule, cfg.epochs) == (
        "sgd",
        1e-3,
        0.9,
        "constant",
        1,
    )
    assert cfg.weight_decay == TrainConfig().weight_decay  # declared nowhere: the command's default
    # Anything given on the command line wins, however spelt; --sparsify-lr over --lr.
    cfg = captured("--method", "tpp", "--sparsify-epochs", "1", "--momentum", "0.5", "--sched", "cosine")[
        "sparsify"
    ]
    assert (cfg.lr, cfg.momentum, cfg.schedule) == (1e-3, 0.5, "cosine")
    cfg = captured("--method", "tpp", "--sparsify-epochs", "1", "--lr", "0.02")["sparsify"]
    assert cfg.lr == 0.02
    seen = captured("--method", "tpp", "--sparsify-epochs", "1", "--lr", "0.02", "--sparsify-lr", "0.003")
    assert (seen["sparsify"].lr, seen["finetune"]) == (0.003, None)


def test_auto_takes_the_declared_length_and_options(captured) -> None:
    for name in ("slimming", "trp", "nuclear", "deephoyer"):
        seen = captured("--method", name, "--sparsify-epochs", "auto")
        assert seen["sparsify"].epochs == method_class(name).schedule.sparsify_epochs == 20, name
        assert seen["sparsify"].lr == 0.01  # these declare no optimiser: the command's
    # DeepHoyer's declared schedule is the structural Group-HS form; --option still wins over it.
    assert captured("--method", "deephoyer", "--sparsify-epochs", "auto")["spec"].options == {
        "regularizer": "group_hs", "structural": True,
    }  # fmt: skip
    spec = captured("--method", "deephoyer", "--sparsify-epochs", "auto", "--option", "structural=false")[
        "spec"
    ]
    assert spec.options == {"regularizer": "group_hs", "structural": "false"}
    # An explicit count is a length only: the method's options stay its defaults, as in `prunekit.prune`.
    assert captured("--method", "deephoyer", "--sparsify-epochs", "2")["spec"].options == {}
    # No stage: none asked for, or a method that declares none.
    assert captured("--method", "tpp")["sparsify"] is None
    assert captured("--method", "l1", "--sparsify-epochs", "auto")["sparsify"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sparsify-epochs", "soon"], "argument --sparsify-epochs: expected a number of epochs or auto"),
        (["--sparsify-epochs", "-1"], "--sparsify-epochs must be ≥ 0 or auto, got -1"),
    ],
)
def test_bad_sparsify_epochs_are_one_line_errors(argv, message, capsys) -> None:
    assert main(["prune", "m.safetensors", "--method", "tpp", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and message in err and err.count("\n") == 1, err


def test_a_stage_length_set_in_steps_refuses_an_epoch_count() -> None:
    method = create_method("tpp", None, update_reg_interval=1, reg_granularity=0.25, stabilize_reg_interval=4)
    assert method.sparsify_steps(4) == 9
    assert sparsify_config(method, TrainConfig(epochs=1), 4).epochs == math.ceil(9 / 4) == 3
    assert sparsify_config(method, None, 4) is None
    with pytest.raises(
        ConfigError, match=r"\(9 steps = 3 epochs of 4 batches\), so 5 sparsify epochs would be"
    ):
        sparsify_config(method, TrainConfig(epochs=5), 4)
    with pytest.raises(ConfigError, match="'l1' has no sparsify stage"):
        sparsify_config(create_method("l1", None), TrainConfig(epochs=2), 4)


def test_refused_before_the_run_folder_exists(dense, tmp_path, capsys) -> None:
    from conftest import SYNTHETIC_28

    out = tmp_path / "p"
    argv = ["prune", str(dense), "--method", "tpp", "--ratios", "conv*:0.5", *SYNTHETIC_28, *TPP_OPTIONS]
    assert main([*argv, "--sparsify-epochs", "5", "--latency-batches", "", "--out", str(out)]) == 2
    assert "so 5 sparsify epochs would be ignored: give --sparsify-epochs auto" in capsys.readouterr().err
    assert not out.exists()


def test_the_run_records_and_uses_the_declared_settings(dense, tmp_path) -> None:
    from conftest import SYNTHETIC_28

    out = tmp_path / "p"
    argv = ["prune", str(dense), "--method", "tpp", "--ratios", "conv*:0.5", *SYNTHETIC_28, *TPP_OPTIONS]
    assert main([*argv, "--sparsify-epochs", "auto", "--latency-batches", "", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ran = summary["sparsify"]
    # 256 images in batches of 64: 4 steps per epoch; 9 declared steps take 3 whole epochs.
    assert (ran["steps_per_epoch"], ran["steps_declared"], ran["steps"]) == (4, 9, 12)
    assert summary["tpp"]["sparsify_steps_run"] == 12
    train = ran["train"]
    assert (train["optimizer"], train["lr"], train["momentum"], train["schedule"], train["epochs"]) == (
        "sgd", 1e-3, 0.9, "constant", 3,
    )  # fmt: skip
    # What the trainer actually stepped with, epoch by epoch: the declared constant 1e-3.
    log = [json.loads(line) for line in (out / "sparsify" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [1e-3, 1e-3, 1e-3] and log[-1]["step"] == 12


def test_compare_keeps_the_switch_of_a_stage_set_in_steps() -> None:
    from prunekit.compare import CompareSpec

    finetune = TrainConfig(epochs=2, lr=0.01, schedule="cosine")
    spec = CompareSpec(
        ("tpp", "slimming"),
        (0.5,),
        finetune,
        sparsify_epochs=3,
        method_options={"tpp": {"stabilize_reg_interval": 8}},
    )
    spec.check()
    tpp, slimming = spec.sparsify("tpp", 0), spec.sparsify("slimming", 0)
    # --sparsify-epochs shortens slimming's 20 epochs; TPP's length is its options' (3 would be refused).
    assert (tpp.epochs, tpp.lr, tpp.schedule, slimming.epochs, slimming.lr) == (1, 1e-3, "constant", 3, 0.01)
    method = create_method("tpp", None, stabilize_reg_interval=8)
    assert sparsify_config(method, tpp, 100).epochs == math.ceil(method.sparsify_steps(100) / 100)
