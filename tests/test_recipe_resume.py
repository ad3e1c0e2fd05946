"""`prunekit run RECIPE --resume`: a recipe run interrupted in any stage continues — finished stages kept,
the interrupted one from its last finished epoch — and ends with the uninterrupted run's weights, summary and
report; a changed recipe or option, a folder without an unfinished recipe run, and --overwrite are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prunekit import recipes
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.recipes import load_recipe, run_recipe
from prunekit.train import loop as train_loop

# LeNet-5 on the packaged Fashion-MNIST subset: 128 training images in batches of 64 (2 steps per epoch),
# 2 epochs in each stage: dense (SGD with momentum and weight decay: optimiser state crosses the break),
# DeepHoyer's regularised training, element-wise pruning, fine-tuning with the zeros frozen.
RECIPE = """\
name: tiny_deephoyer
model: {arch: lenet5}
data: {dataset: fashion_mnist_mini, eval_batch_size: 64}
dense: {epochs: 2, batch_size: 64, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, seed: 1}
method:
  name: deephoyer
  options: {regularizer: hoyer_square, decay: 1.0e-4, threshold: std, sensitivity: 0.5}
sparsify: {epochs: 2, batch_size: 64, lr: 0.01, momentum: 0.9, seed: 2}
finetune: {epochs: 2, batch_size: 64, lr: 0.01, momentum: 0.9, seed: 3}
published: {top1: 90.0}
"""
OPTIONS = ["--limit-train", "128", "--limit-test", "64", "--device", "cpu", "--threads", "1"]
TIMELESS = ("time", "images_per_s", "epoch_time_s")


class Stop(KeyboardInterrupt):
    """What Ctrl-C (or a killed job's SIGINT) raises."""


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def straight(recipe_file, tmp_path_factory) -> Path:
    """The recipe run without a break."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["run", str(recipe_file), "--out", str(out), *OPTIONS]) == 0
    return out


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMELESS} for r in rows]


def _status(run: Path) -> str:
    return json.loads((run / "summary.json").read_text())["status"]


def _stop_after_first_epoch(monkeypatch, run_dir: Path) -> None:
    """Interrupt the training that logs into `run_dir` right after its first epoch is checkpointed."""
    original = train_loop.append_record

    def append_then_stop(where, record):
        original(where, record)
        if Path(where) == run_dir and record["epoch"] == 1:
            raise Stop

    monkeypatch.setattr(train_loop, "append_record", append_then_stop)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_interrupted_in_every_stage_in_turn_then_resumed(recipe_file, straight, tmp_path) -> None:
    out = tmp_path / "run"
    dense, pruned = out / "dense", out / "pruned"
    resume = ["run", "--resume", "--out", str(out)]  # everything else comes from the run's config.yaml

    # 1. Stopped in the dense stage after its first epoch: nothing of the prune stage exists yet.
    with pytest.MonkeyPatch.context() as patch:
        _stop_after_first_epoch(patch, dense)
        assert main(["run", str(recipe_file), "--out", str(out), *OPTIONS]) == 130
    assert _status(out) == _status(dense) == "incomplete"
    first_dense_epoch = _log(dense / "log.jsonl")
    assert [r["epoch"] for r in first_dense_epoch] == [1] and not pruned.exists()

    # 2. Resumed (recipe and options given again, unchanged: accepted), stopped in the sparsify stage. The
    # dense stage went on from its checkpoint: epoch 1 was not trained again (its record, clock included).
    with pytest.MonkeyPatch.context() as patch:
        _stop_after_first_epoch(patch, pruned / "sparsify")
        assert main(["run", str(recipe_file), "--resume", "--out", str(out), *OPTIONS]) == 130
    assert _log(dense / "log.jsonl")[:1] == first_dense_epoch
    assert [r["epoch"] for r in _log(dense / "log.jsonl")] == [1, 2] and _status(dense) == "complete"
    assert _status(pruned) == "incomplete"
    first_sparsify_epoch = _log(pruned / "sparsify" / "log.jsonl")
    assert [r["epoch"] for r in first_sparsify_epoch] == [1]
    dense_summary = (dense / "summary.json").read_bytes()  # holds its wall time: rewritten if trained again

    # 3. Resumed from --out alone, stopped in the fine-tune.
    with pytest.MonkeyPatch.context() as patch:
        _stop_after_first_epoch(patch, pruned)
        assert main(resume) == 130
    assert (dense / "summary.json").read_bytes() == dense_summary  # the finished dense stage was kept
    sparsify_log = _log(pruned / "sparsify" / "log.jsonl")
    assert sparsify_log[:1] == first_sparsify_epoch and [r["epoch"] for r in sparsify_log] == [1, 2]
    assert [r["epoch"] for r in _log(pruned / "log.jsonl")] == [1]

    # 4. Resumed, stopped after both stages finished, while the recipe's report is written.
    def stop(*args, **kwargs):
        raise Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipes, "_recipe_report", stop)
        assert main(resume) == 130
    assert _status(pruned) == "complete" and _status(out) == "incomplete"
    assert not (out / "report.md").exists()
    pruned_summary = (pruned / "summary.json").read_bytes()

    # 5. Resumed to the end: both stages kept, the recipe's summary and report made from them.
    assert main(resume) == 0
    assert (dense / "summary.json").read_bytes() == dense_summary
    assert (pruned / "summary.json").read_bytes() == pruned_summary
    _same_weights(straight / "dense" / "model.safetensors", dense / "model.safetensors")
    _same_weights(straight / "pruned" / "model.safetensors", pruned / "model.safetensors")
    for log in ("dense/log.jsonl", "pruned/sparsify/log.jsonl", "pruned/log.jsonl"):
        assert _timeless(_log(straight / log)) == _timeless(_log(out / log)), log
    # The recipe's summary and report hold no wall time or path of the folder: byte for byte the same.
    assert (out / "summary.json").read_bytes() == (straight / "summary.json").read_bytes()
    assert (out / "report.md").read_bytes() == (straight / "report.md").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["ours"]["sparsity"]["pruned"] > 0


# HRank's original schedule: one mask-and-fine-tune stage per entry, in `pruned/stage00k/`, without
# checkpoints of their own (a resumed prune stage runs them again).
HRANK = """\
name: tiny_hrank
model: {arch: lenet5}
data: {dataset: fashion_mnist_mini, eval_batch_size: 64}
dense: {epochs: 1, batch_size: 64, lr: 0.05, momentum: 0.9, seed: 1}
method:
  name: hrank
  options: {rates: "[0.5]*2", schedule: layerwise, n_images: 64, batch_size: 64}
finetune: {per_stage: true, epochs: 2, batch_size: 64, lr: 0.01, momentum: 0.9, seed: 3}
published: {top1: 90.0}
"""


def test_interrupted_in_a_layerwise_hrank_stage_then_resumed(tmp_path) -> None:
    recipe = tmp_path / "hrank.yaml"
    recipe.write_text(HRANK)
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(straight), *OPTIONS]) == 0
    with pytest.MonkeyPatch.context() as patch:
        _stop_after_first_epoch(patch, out / "pruned" / "stage001")  # the second stage
        assert main(["run", str(recipe), "--out", str(out), *OPTIONS]) == 130
    assert [r["epoch"] for r in _log(out / "pruned" / "stage000" / "log.jsonl")] == [1, 2]
    dense_summary = (out / "dense" / "summary.json").read_bytes()
    assert main(["run", "--resume", "--out", str(out)]) == 0
    assert (out / "dense" / "summary.json").read_bytes() == dense_summary
    _same_weights(straight / "pruned" / "model.safetensors", out / "pruned" / "model.safetensors")
    assert (out / "pruned" / "stages.jsonl").read_bytes() == (
        straight / "pruned" / "stages.jsonl"
    ).read_bytes()
    assert (out / "summary.json").read_bytes() == (straight / "summary.json").read_bytes()
    assert (out / "report.md").read_bytes() == (straight / "report.md").read_bytes()
    assert json.loads((out / "summary.json").read_text())["ours"]["mac_speedup"] > 1


@pytest.fixture
def unfinished(straight, tmp_path) -> Path:
    """A copy of the straight run marked as interrupted at its very end (refusals do no work on it)."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "summary.json").write_text(json.dumps({"status": "incomplete", "error": "interrupted"}))
    return out


def test_a_changed_recipe_file_is_refused_naming_what_differs(recipe_file, unfinished, capsys) -> None:
    original = recipe_file.read_text()
    before = (unfinished / "summary.json").read_bytes()
    try:
        changed = original.replace("finetune: {epochs: 2", "finetune: {epochs: 3")
        recipe_file.write_text(changed.replace("sensitivity: 0.5}", "sensitivity: 0.5, prune_biases: true}"))
        assert main(["run", "--resume", "--out", str(unfinished)]) == 2
    finally:
        recipe_file.write_text(original)
    assert capsys.readouterr().err == (
        f"prunekit: error: recipe {recipe_file} changed since the run in {unfinished} started: "
        "method.options.prune_biases: None in the run, True now; finetune.epochs: 2 in the run, 3 now; a "
        "resumed run keeps its recipe: restore those values, or start a new run with another --out\n"
    )
    assert (unfinished / "summary.json").read_bytes() == before  # refused before touching anything


def test_a_changed_option_is_refused_naming_both_values(recipe_file, unfinished, capsys) -> None:
    assert main(["run", "--resume", "--out", str(unfinished), "--limit-train", "256"]) == 2
    err = capsys.readouterr().err
    assert "--limit-train 256 differs from the run being resumed (--limit-train 128 in" in err
    assert main(["run", str(recipe_file), "--resume", "--out", str(unfinished), "--epochs-scale", "0.5"]) == 2
    assert (
        "--epochs-scale 0.5 differs from the run being resumed (--epochs-scale 1.0 in"
        in capsys.readouterr().err
    )
    # The Python API refuses the same way.
    with pytest.raises(
        ConfigError, match=r"--limit-test 32 differs from the run being resumed \(--limit-test 64 in"
    ):
        run_recipe(load_recipe(recipe_file), unfinished, limit_train=128, limit_test=32, resume=True)


def test_resume_refusals(recipe_file, straight, tmp_path, capsys) -> None:
    def error(*argv: str) -> str:
        assert main(["run", *argv]) == 2
        return capsys.readouterr().err

    # A finished run has nothing to resume; --resume with --overwrite contradicts itself.
    assert error("--resume", "--out", str(straight)) == (
        f"prunekit: error: the run in {straight} already finished (summary.json says complete): there is "
        f"nothing to resume; `prunekit report {straight}` shows it, --overwrite runs it again\n"
    )
    assert "--overwrite and --resume contradict each other" in error(
        "--resume", "--overwrite", "--out", str(straight)
    )
    # A folder without a run, a missing one, a train run's folder.
    (tmp_path / "empty").mkdir()
    assert "holds no run to resume (no config.yaml); drop --resume" in error(
        "--resume", "--out", str(tmp_path / "empty")
    )
    assert "holds no run to resume" in error("--resume", "--out", str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    other = tmp_path / "train_run"
    other.mkdir()
    (other / "config.yaml").write_text("command: train\ncommand_line: {}\n")
    assert "holds a train run that `prunekit run --resume` cannot continue" in error(
        "--resume", "--out", str(other)
    )
    # Without --out the run folder follows the recipe's name; without a recipe there is nothing to run.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert "runs/tiny_deephoyer holds no run to resume" in error(str(recipe_file), "--resume")
    assert "run needs the recipe YAML file (or --resume with the --out of a recipe run)" in error("--resume")
    assert "run needs the recipe YAML file" in error()
