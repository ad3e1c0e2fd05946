"""torchrun + DDP on 2 CPU processes (gloo) equals one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddp_worker import CFG, HOOKED_CFG, PER_RANK_BATCH, GradientEdits
from prunekit.errors import ConfigError
from prunekit.train import cleanup, fit, init_distributed
from train_helpers import loaders, tiny_net

TESTS = Path(__file__).resolve().parent


def test_single_process_defaults_without_torchrun(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device, info.is_main) == (
        0,
        1,
        0,
        torch.device("cpu"),
        True,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 is outside WORLD_SIZE=2"),
        ({"RANK": "zero", "WORLD_SIZE": "2"}, r"environment variable RANK='zero' is not an integer"),
    ],
)
def test_bad_launcher_environment_is_a_config_error(monkeypatch, env: dict, message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        init_distributed(device="cpu")


@pytest.mark.parametrize("failed", [False, True])
def test_cleanup_waits_for_peers_only_after_success(tmp_path, monkeypatch, failed: bool) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    barriers: list[int] = []
    real_barrier = tdist.barrier
    monkeypatch.setattr(tdist, "barrier", lambda *a, **kw: (barriers.append(1), real_barrier(*a, **kw)))
    cleanup(failed=failed)
    assert not tdist.is_initialized()
    assert barriers == ([] if failed else [1])  # a failed rank must not wait for peers that may never come
    cleanup()  # without a group: nothing to do


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_global_batch(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        str(TESTS / "ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # a safety net only
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert (tmp_path / "run0" / "log.jsonl").is_file() and (tmp_path / "run0" / "last.safetensors").is_file()
    assert not (tmp_path / "run1").exists()  # rank 1 wrote nothing
    resumed_log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in resumed_log] == [1, 2]
    ranks = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["is_main"] for r in ranks] == [True, False]
    metrics = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5")
    per_rank = [[{k: e[k] for k in metrics} for e in r["history"]] for r in ranks]
    assert per_rank[0] == per_rank[1]  # metrics are all-reduced: every rank reports the same numbers
    w0, w1, r0, r1 = (
        load_file(tmp_path / f"{name}{r}.safetensors") for name in ("weights", "resumed") for r in (0, 1)
    )
    for k in (
        w0
    ):  # ranks stay in sync, and the resumed run (rank 1 without a run folder) lands on the same weights
        assert torch.equal(w0[k], w1[k]) and torch.equal(w0[k], r0[k]) and torch.equal(w0[k], r1[k]), k

    # DeviceLoader shards like DistributedSampler: the two rank batches of a step together are exactly the
    # single-process batch of that step, and DDP averages the two mean gradients into the global mean.
    torch.manual_seed(0)
    single = tiny_net()
    train, val = loaders(2 * PER_RANK_BATCH)
    reference = fit(single, train, val, CFG, progress=False)
    for k, v in single.state_dict().items():
        assert torch.allclose(w0[k], v, atol=1e-5), k
    for ddp_epoch, ref_epoch in zip(per_rank[0], reference.history, strict=True):
        for k in metrics:
            assert ddp_epoch[k] == pytest.approx(ref_epoch[k], abs=1e-4), k

    # Training hooks under DDP: every rank applies the same penalty, gradient edit and projection to the
    # already averaged gradients, so two ranks land where one process with the global batch lands.
    h0, h1 = (load_file(tmp_path / f"hooked{r}.safetensors") for r in (0, 1))
    torch.manual_seed(0)
    single = tiny_net()
    fit(single, train, val, HOOKED_CFG, hooks=[GradientEdits()], progress=False)
    for k, v in single.state_dict().items():
        assert torch.equal(h0[k], h1[k]) and torch.allclose(h0[k], v, atol=1e-5), k
    first = next(single.parameters()).detach()
    assert torch.equal(first.clamp(-0.2, 0.2), first)
    assert bool((first.abs() == torch.tensor(0.2)).any())  # the projection acted
