"""`torchrun --nproc-per-node=2 -m prunekit train ...` on two CPU processes (gloo)."""

import json
import subprocess
import sys


def test_torchrun_two_cpu_processes_train_one_run_folder(tmp_path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "prunekit",
        "train",
        "--arch",
        "lenet5",
        "--data",
        "synthetic",
        "--data-option",
        "shape=1x28x28",
        "--limit-train",
        "256",
        "--limit-test",
        "128",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    # The timeout is a safety net against a hung process group, not a speed check.
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]  # one writer: rank 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top1"] == log[-1]["val_top1"]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("top-1 ") for line in lines) == 1  # only rank 0 prints the result
    assert sum(line.startswith("epoch ") for line in lines) == 2  # ... and the epoch lines
