"""`prunekit prune --resume`: a run interrupted in its sparsify stage (TPP/GReg's λ ramp) or its fine-tune
continues from the last finished epoch — weights, optimiser, RNG, step and the method's own state (λ
clocks, picks) — and ends with the weights of the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.errors import CheckpointError
from prunekit.methods.tpp.method import RegularisedPruning
from prunekit.train import TrainConfig, fit
from prunekit.train import loop as train_loop
from train_helpers import loaders, tiny_net

TIMELESS = ("time", "images_per_s", "epoch_time_s")
# LeNet-5 on 256 synthetic images in batches of 64: 4 steps per epoch. TPP: λ = 0.25·t reaches 1 at t = 4,
# 4 held steps (one layer zeroed per step) + 1 = 9 steps → 3 epochs. GReg-2: 2 uniform updates to 0.1 pick
# the filters at t = 1 (inside epoch 1), then 0.1 + 0.25·k passes 1 at t = 5: 10 steps → 3 epochs.
OPTIONS = {
    "tpp": {
        "update_reg_interval": 1, "reg_granularity": 0.25, "stabilize_reg_interval": 4,
        "zero_out_interval": 1,
    },
    "greg2": {
        "update_reg_interval": 1, "reg_granularity": 0.25, "stabilize_reg_interval": 4,
        "reg_granularity_pick": 0.05, "reg_upper_limit_pick": 0.1,
    },
    # Projections after steps 4, 8: the one ending epoch 1 leaves step 5 (a TRP step) its sub-gradient.
    "trp": {"period": 4, "rule": "energy", "threshold": 0.2},
}  # fmt: skip
SPARSIFY_EPOCHS = {"tpp": "auto", "greg2": "auto", "trp": "2"}


class Stop(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from conftest import SYNTHETIC_28

    out = tmp_path_factory.mktemp("resume_dense")
    argv = ["train", "--arch", "lenet5", *SYNTHETIC_28, "--epochs", "1", "--latency-batches", ""]
    assert main([*argv, "--out", str(out)]) == 0
    return out / "model.safetensors"


def _argv(dense, method: str, out) -> list[str]:
    from conftest import SYNTHETIC_28

    argv = ["prune", str(dense), "--method", method, *SYNTHETIC_28]
    argv += [] if method == "trp" else ["--ratios", "conv*:0.5"]  # TRP's ranks come from its rule
    argv += [f"--option={k}={v}" for k, v in OPTIONS[method].items()]
    # Momentum and weight decay carry optimiser state across the interruption; the dropout-free LeNet-5
    # still draws its shuffles and crops from the RNG the checkpoint restores.
    argv += ["--sparsify-epochs", SPARSIFY_EPOCHS[method], "--finetune-epochs", "2", "--latency-batches", ""]
    argv += ["--out", str(out)]
    return argv


def _log(path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMELESS} for r in rows]


def _same_run(a, b, method: str) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sb["status"] == "complete"
    assert sa[method] == sb[method]  # removed filters, final λ, steps run, mean |w| before removal
    assert sa["pruned"]["top1"] == sb["pruned"]["top1"]
    assert sa["sparsify"] == sb["sparsify"]
    assert _log(a / "sparsify" / "log.jsonl") == _log(b / "sparsify" / "log.jsonl")
    assert _log(a / "log.jsonl") == _log(b / "log.jsonl")


@pytest.mark.parametrize("method", ["tpp", "greg2"])
def test_interrupted_in_the_sparsify_stage_then_resumed(dense, tmp_path, monkeypatch, method) -> None:
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_argv(dense, method, straight)) == 0

    original = RegularisedPruning.after_step

    def stop_at_step_7(self, model, step):  # epoch 2 of 3: epoch 1 is checkpointed, its λ clock with it
        if step == 7:
            raise Stop
        original(self, model, step)

    with monkeypatch.context() as patch:
        patch.setattr(RegularisedPruning, "after_step", stop_at_step_7)
        assert main(_argv(dense, method, broken)) == 130
    summary = json.loads((broken / "summary.json").read_text())
    assert summary["status"] == "incomplete" and not (broken / "model.safetensors").exists()
    assert [r["epoch"] for r in _log(broken / "sparsify" / "log.jsonl")] == [1]
    state = torch.load(broken / "sparsify" / "trainer_state.pt", weights_only=True)
    saved = state["hooks"][0]["state"]
    assert state["step"] == saved["steps_taken"] == 4
    clock = saved["clocks"]["clock"]
    if method == "tpp":  # updates at t = 0…4 (conv1, conv2): λ = 0.25·(5 − 1) = τ, the hold began at t = 4
        assert (clock["counts"], clock["t_stab"]) == ([5, 5], 4)
    else:  # picked at t = 1 (the uniform ramp's 2nd update), then the removed filters' λ at t = 2, 3, 4
        assert (saved["clocks"]["pick_clock"]["t_stab"], clock["counts"], clock["t_stab"]) == (
            1,
            [3, 3],
            None,
        )
        assert all(r is not None for r in saved["removed"])

    assert main(["prune", "--resume", "--out", str(broken)]) == 0
    _same_run(straight, broken, method)


def test_trp_resumes_with_the_sub_gradient_of_the_last_projection(dense, tmp_path, monkeypatch) -> None:
    from prunekit.methods.trp.method import TRP

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_argv(dense, "trp", straight)) == 0
    original = TRP.after_step

    def stop_at_step_6(self, model, step):
        if step == 6:
            raise Stop
        original(self, model, step)

    with monkeypatch.context() as patch:
        patch.setattr(TRP, "after_step", stop_at_step_6)
        assert main(_argv(dense, "trp", broken)) == 130
    saved = torch.load(broken / "sparsify" / "trainer_state.pt", weights_only=True)["hooks"][0]["state"]
    assert saved["step"] == 4 and len(saved["subgradients"]) == 1  # LeNet-5's one trained conv, conv2
    assert main(["prune", "--resume", "--out", str(broken)]) == 0
    _same_run(straight, broken, "trp")


def test_interrupted_in_the_fine_tune_then_resumed(dense, tmp_path, monkeypatch) -> None:
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_argv(dense, "tpp", straight)) == 0

    original = train_loop.append_record

    def stop_after_first_fine_tune_epoch(run_dir, record):
        original(run_dir, record)
        if run_dir == broken and record["epoch"] == 1:
            raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(train_loop, "append_record", stop_after_first_fine_tune_epoch)
        assert main(_argv(dense, "tpp", broken)) == 130
    assert [r["epoch"] for r in _log(broken / "log.jsonl")] == [1]
    assert main(["prune", "--resume", "--out", str(broken)]) == 0
    _same_run(straight, broken, "tpp")


def test_resume_refuses_a_changed_option(dense, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    assert main(_argv(dense, "tpp", out)) == 0
    capsys.readouterr()
    assert main(["prune", "--resume", "--out", str(out), "--sparsify-lr", "0.1"]) == 2
    assert (
        "--sparsify-lr 0.1 differs from the run being resumed (--sparsify-lr None" in capsys.readouterr().err
    )


class Counter:
    """A hook whose effect depends on its own count, not only on the weights."""

    def __init__(self) -> None:
        self.calls = 0

    def after_step(self, model, step) -> None:
        self.calls += 1
        with torch.no_grad():
            model[0].weight.mul_(1 - 0.01 * (self.calls % 3))

    def hook_state(self) -> dict:
        return {"calls": self.calls}

    def load_hook_state(self, state: dict) -> None:
        self.calls = state["calls"]


def test_fit_checkpoints_the_state_of_stateful_hooks(tmp_path) -> None:
    train, val = loaders(32)
    cfg = TrainConfig(epochs=3, lr=0.1)
    torch.manual_seed(0)
    straight, hook = tiny_net(), Counter()
    fit(straight, train, val, cfg, hooks=[hook], run_dir=tmp_path / "a", progress=False)

    def stop(record: dict) -> None:
        if record["epoch"] == 1:
            raise Stop

    torch.manual_seed(0)
    with pytest.raises(Stop):
        fit(
            tiny_net(),
            train,
            val,
            cfg,
            hooks=[Counter()],
            run_dir=tmp_path / "b",
            progress=False,
            on_epoch_end=stop,
        )
    resumed, again = tiny_net(), Counter()
    fit(resumed, train, val, cfg, hooks=[again], run_dir=tmp_path / "b", resume=True, progress=False)
    assert again.calls == hook.calls == 3 * len(train)  # counted on from the checkpoint's 8, not from 0
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # A checkpoint cannot continue hooks it holds no state of (or drop the state it holds).
    with pytest.raises(
        CheckpointError, match=r"holds the state of \['Counter'\] training hooks, this run has none"
    ):
        fit(tiny_net(), train, val, cfg, run_dir=tmp_path / "b", resume=True, progress=False)


def _hrank_argv(dense, out) -> list[str]:
    from conftest import SYNTHETIC_28

    layerwise = ["--option", "schedule=layerwise", "--calib-images", "64", "--option", "n_images=64"]
    argv = ["prune", str(dense), "--method", "hrank", "--ratios", "[0.5]+[0.6]", *layerwise, *SYNTHETIC_28]
    return [*argv, "--finetune-epochs", "2", "--latency-batches", "", "--out", str(out)]


def test_hrank_layerwise_resumes_after_its_last_finished_stage(dense, tmp_path, monkeypatch) -> None:
    """HRank's layer-wise schedule fine-tunes once per compress-rate entry: a run interrupted in stage 2
    keeps stage 1 (its record and the weights after it) and runs only stage 2 again."""
    from prunekit.methods.hrank import schedule

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_hrank_argv(dense, straight)) == 0
    original = schedule._fine_tune_stage
    calls: list[Path] = []

    def stop_in_stage_2(*args, **kwargs):
        calls.append(args[5])  # the stage's folder
        if len(calls) == 2:
            # half-way: the stage's folder holds a log line and a checkpoint of its first epoch
            (args[5] / "log.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (args[5] / "log.jsonl").write_text('{"epoch": 1}\n')
            raise Stop
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(schedule, "_fine_tune_stage", stop_in_stage_2)
        assert main(_hrank_argv(dense, broken)) == 130
    assert len((broken / "stages.jsonl").read_text().splitlines()) == 1
    assert load_file(broken / "stages_state.safetensors")  # the weights after stage 1

    calls.clear()
    with monkeypatch.context() as patch:
        patch.setattr(schedule, "_fine_tune_stage", _counting(original, calls))
        assert main(["prune", "--resume", "--out", str(broken)]) == 0
    assert [c.name for c in calls] == ["stage001"]  # stage 1 was not trained again
    wa, wb = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (straight, broken))
    assert sa["hrank"]["stages"] == sb["hrank"]["stages"] and sa["pruned"]["top1"] == sb["pruned"]["top1"]
    assert (straight / "stages.jsonl").read_text() == (broken / "stages.jsonl").read_text()
    assert _log(straight / "stage001" / "log.jsonl") == _log(broken / "stage001" / "log.jsonl")


def _counting(fine_tune, calls):
    def run(*args, **kwargs):
        calls.append(args[5])
        return fine_tune(*args, **kwargs)

    return run


def test_hrank_layerwise_resume_refuses_stages_that_differ(dense, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_hrank_argv(dense, out)) == 0
    log = out / "stages.jsonl"
    first, *rest = log.read_text().splitlines()
    record = json.loads(first)
    record["kept"] = {name: width - 1 for name, width in record["kept"].items()}  # not what the picks give
    log.write_text("\n".join([json.dumps(record), *rest]) + "\n")
    (out / "summary.json").write_text(
        json.dumps({**json.loads((out / "summary.json").read_text()), "status": "incomplete"})
    )
    (out / "model.safetensors").unlink()
    assert main(["prune", "--resume", "--out", str(out)]) == 2
    assert "cannot resume: stage 0" in capsys.readouterr().err
