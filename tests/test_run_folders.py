"""Run folders a user can trust: one run per folder, --overwrite, --resume from config.yaml alone, runs that
fail leave nothing or say they are incomplete, the run's record states its threads and warnings."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SYNTHETIC_28
from prunekit import model_file
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.report.run_folder import RunFolder, open_run

TINY = [*SYNTHETIC_28, "--epochs", "2", "--lr", "0.05", "--threads", "1"]


def epochs_in_log(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in rows if r.get("kind", "epoch") == "epoch"]


def train(out: Path, *extra: str) -> int:
    return main(["train", "--arch", "lenet5", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """A LeNet-5 trained 2 epochs on the synthetic 1x28x28 data, with its run folder."""
    out = tmp_path_factory.mktemp("dense") / "run"
    assert train(out) == 0
    return out


def test_a_second_run_into_the_same_folder_is_refused_and_overwrite_starts_clean(dense, tmp_path, capsys):
    out = tmp_path / "p"
    model = str(dense / "model.safetensors")
    prune = ["prune", model, "--method", "l1", "--ratio", "0.5", *SYNTHETIC_28, "--threads", "1"]
    assert main([*prune, "--finetune-epochs", "1", "--out", str(out)]) == 0
    first = {p.name for p in out.iterdir()}
    assert {"log.jsonl", "last.safetensors", "trainer_state.pt", "curves.png"} <= first
    before = (out / "summary.json").read_bytes()
    capsys.readouterr()

    assert main([*prune, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"prunekit: error: {out} already holds a run; choose another --out, pass --resume to continue it, "
        "or --overwrite to replace it\n"
    )
    assert (out / "summary.json").read_bytes() == before  # refused before touching anything

    # The replacement fine-tunes nothing: no log, checkpoint or curves of the first run may remain.
    assert main([*prune, "--out", str(out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"config.yaml", "summary.json", "model.safetensors", "report.md", "widths.png"}
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["status"] == "complete"
        and summary["pruned"]["top1"] == summary["pruned"]["top1_before_finetune"]
    )


def test_train_twice_with_overwrite_logs_only_the_new_run(dense, tmp_path) -> None:
    out = tmp_path / "t"
    assert train(out) == 0
    assert epochs_in_log(out) == [1, 2]
    assert train(out, "--epochs", "1") == 2
    assert train(out, "--epochs", "1", "--overwrite") == 0
    assert epochs_in_log(out) == [1]  # not [1, 2, 1]: curves.png no longer zig-zags between two runs
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 1


def test_folders_that_are_not_runs_are_never_cleared(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no prunekit run"):
        open_run(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="holds no run to resume"):
        open_run(tmp_path / "new", resume=True)
    with pytest.raises(ConfigError, match="contradict"):
        open_run(tmp_path / "new", resume=True, overwrite=True)


class Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_run_is_marked_incomplete_then_resumed_from_out_alone(
    dense, tmp_path, monkeypatch, capsys
):
    import prunekit.train.loop as loop

    original = loop.append_record

    def stop_after_first_epoch(run_dir, record):
        original(run_dir, record)
        if record["epoch"] == 1:
            raise Interrupt

    out = tmp_path / "r"
    monkeypatch.setattr(loop, "append_record", stop_after_first_epoch)
    assert train(out) == 130
    monkeypatch.setattr(loop, "append_record", original)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"status": "incomplete", "error": "interrupted"}
    assert "model.safetensors" not in {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "did not finish (status incomplete: interrupted)" in capsys.readouterr().err
    config = (out / "config.yaml").read_bytes()

    # A different value for an option the run recorded is refused with both values.
    assert main(["train", "--resume", "--out", str(out), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 differs from the run being resumed (--lr 0.05 in" in err
    # The same value, and options that only say where it runs, are accepted; nothing else is needed.
    assert main(["train", "--resume", "--out", str(out), "--lr", "0.05", "--device", "cpu"]) == 0
    assert (out / "config.yaml").read_bytes() == config
    assert epochs_in_log(out) == [1, 2]
    resumed = model_file.load(out / "model.safetensors")
    straight = model_file.load(dense / "model.safetensors")  # the same options, run without a break
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_a_failure_after_training_leaves_the_folder_marked_incomplete(dense, tmp_path, monkeypatch, capsys):
    import prunekit.pipeline as pipeline

    def broken(*args, **kwargs):
        raise ConfigError("timing failed")

    monkeypatch.setattr(pipeline, "measure_model", broken)
    out = tmp_path / "f"
    small = ["--limit-train", "64", "--limit-test", "32", "--device", "cpu", "--threads", "1"]
    assert (
        main(["finetune", str(dense / "model.safetensors"), "--epochs", "1", *small, "--out", str(out)]) == 2
    )
    assert json.loads((out / "summary.json").read_text()) == {
        "status": "incomplete",
        "error": "ConfigError: timing failed",
    }
    assert epochs_in_log(out) == [1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "l1", "--ratio", "1.5"], "ratio"),
        (["--method", "l2"], "unknown method 'l2'"),
        (["--method", "l1", "--option", "sead=3"], "sead"),
        (["--method", "l1", "--calib-images", "0"], "calib_images must be at least 1"),
        (["--method", "l1", "--latency-batches", "0"], "--latency-batches must be batch sizes ≥ 1"),
        (["--method", "l1", "--limit-train", "0"], "--limit-train must be a whole number ≥ 1"),
        (["--method", "l1", "--data", "cifar11"], "unknown dataset 'cifar11'"),
        (["--method", "l1", "--threads", "0"], "--threads must be a whole number ≥ 1"),
        (["--method", "l1", "--finetune-epochs", "1", "--teacher", "/nope.safetensors"], "no model file"),
        (["--method", "l1", "--teacher", "x.safetensors"], "--teacher distils during fine-tuning"),
        (["--method", "l1", "--epochs", "3"], "--finetune-epochs N and --sparsify-epochs N"),
        (["--method", "l1", "--data-option", "shape=3x32x32"], "cannot run on 3x32x32 images"),
    ],
)
def test_bad_prune_arguments_leave_nothing_behind(dense, tmp_path, argv, message, capsys) -> None:
    out = tmp_path / "never"
    assert main(["prune", str(dense / "model.safetensors"), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_train_refuses_latency_batches_0_before_training(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    assert train(out, "--latency-batches", "0") == 2
    assert "--latency-batches must be batch sizes ≥ 1, e.g. 1,64; got 0" in capsys.readouterr().err
    assert not out.exists()


def test_threads_are_recorded_in_config_and_summary(dense, tmp_path, monkeypatch) -> None:
    import prunekit.train.threads as threads

    config = yaml.safe_load((dense / "config.yaml").read_text())
    summary = json.loads((dense / "summary.json").read_text())
    assert config["threads"] == 1 and summary["threads"] == 1 and summary["latency_threads"] == 1
    from prunekit.measure.allocator import steady_allocator

    assert summary["latency_allocator"] == steady_allocator()  # how the latency was timed
    out = tmp_path / "ft"
    asked = []  # without --threads the default decides (one thread: two would only contend on CI)
    monkeypatch.setattr(threads, "default_threads", lambda: asked.append(1) or 1)
    small = ["--limit-train", "64", "--limit-test", "32", "--device", "cpu"]
    assert (
        main(["finetune", str(dense / "model.safetensors"), "--epochs", "1", *small, "--out", str(out)]) == 0
    )
    assert json.loads((out / "summary.json").read_text())["threads"] == 1 and asked == [1]
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["command_line"]["threads"] is None and recorded["threads"] == 1
    torch.set_num_threads(1)  # the run set this process's count; the other tests want one


def test_physical_cores_counts_hyperthread_siblings_once(tmp_path, monkeypatch) -> None:
    import prunekit.train.threads as threads

    for cpu, siblings in enumerate(["0,2", "1,3", "0,2", "1,3"]):
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.physical_cores(tmp_path) == 2
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 2})  # one core's two threads
    assert threads.physical_cores(tmp_path) == 1
    with pytest.raises(ConfigError, match="--threads must be a whole number ≥ 1, got 0"):
        threads.check_threads(0)
    # Under torchrun the ranks on one machine share its cores; cores busy with other work are left alone.
    monkeypatch.setattr(threads, "physical_cores", lambda: 8)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.4, 0.0, 0.0))
    assert threads.check_threads(None) == 8 and threads.check_threads(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.check_threads(None) == 4
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.7, 0.0, 0.0))
    assert threads.check_threads(None) == 3  # 8 cores, 5 busy
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (15.0, 0.0, 0.0))
    assert threads.check_threads(None) == 1


def test_report_on_a_missing_folder_creates_nothing(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert f"run folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_reading_a_folder_never_creates_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RunFolder(tmp_path / "gone").read_summary()
    assert RunFolder(tmp_path / "gone").read_log() == []
    assert not (tmp_path / "gone").exists()
