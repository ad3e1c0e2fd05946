"""Atomic per-epoch checkpoints and bit-exact resume on CPU."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunekit.errors import CheckpointError, ConfigError
from prunekit.train import TrainConfig, fit
from prunekit.train.runlog import reconcile_epochs
from train_helpers import loaders, tiny_net

# Everything that could break exactness: BN buffers, dropout (global RNG), crop/flip augmentation,
# Nesterov momentum, weight decay, warm-up then cosine across the interruption.
CFG = TrainConfig(epochs=3, lr=0.1, nesterov=True, weight_decay=5e-4, warmup_epochs=0.5, schedule="cosine")
TIMELESS = ("time", "images_per_s", "epoch_time_s")


class Interrupt(Exception):
    pass


def stop_after(epoch: int):
    def hook(record: dict) -> None:
        if record["epoch"] == epoch:
            raise Interrupt

    return hook


def model() -> torch.nn.Module:
    return tiny_net(bn=True, dropout=0.2)


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMELESS} for r in history]


def test_interrupted_then_resumed_run_is_bit_identical(tmp_path) -> None:
    train, val = loaders(32, augment=True)
    torch.manual_seed(0)
    straight = model()
    expected = fit(straight, train, val, CFG, run_dir=tmp_path / "a", progress=False)

    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        fit(model(), train, val, CFG, run_dir=tmp_path / "b", progress=False, on_epoch_end=stop_after(1))
    torch.manual_seed(123)  # a new process: other initial weights, other RNG state
    resumed = model()
    result = fit(resumed, train, val, CFG, run_dir=tmp_path / "b", resume=True, progress=False)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert without_time(result.history) == without_time(expected.history)
    assert (result.final_top1, result.best_top1, result.epochs_run) == (
        expected.final_top1,
        expected.best_top1,
        3,
    )
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    saved = load_file(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in resumed.state_dict().items())


def test_resuming_a_finished_run_trains_nothing(tmp_path) -> None:
    train, val = loaders(64)
    net = tiny_net()
    first = fit(net, train, val, TrainConfig(epochs=1), run_dir=tmp_path, progress=False)
    again = tiny_net()
    result = fit(again, train, val, TrainConfig(epochs=1), run_dir=tmp_path, resume=True, progress=False)
    assert result.history == first.history and result.epochs_run == 1
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_resume_without_a_checkpoint_says_so(tmp_path) -> None:
    train, val = loaders(64)
    with pytest.raises(
        CheckpointError, match=r"cannot resume: .* has no last.safetensors \+ trainer_state.pt"
    ):
        fit(tiny_net(), train, val, TrainConfig(epochs=1), run_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="resume=True needs run_dir"):
        fit(tiny_net(), train, val, TrainConfig(epochs=1), resume=True, progress=False)


@pytest.fixture
def one_epoch_run(tmp_path):
    train, val = loaders(64)
    with pytest.raises(Interrupt):
        fit(
            tiny_net(),
            train,
            val,
            TrainConfig(epochs=2),
            run_dir=tmp_path,
            progress=False,
            on_epoch_end=stop_after(1),
        )
    return tmp_path, train, val


def test_weights_of_another_architecture_are_refused(one_epoch_run) -> None:
    run, train, val = one_epoch_run
    with pytest.raises(
        CheckpointError,
        match=r"does not match the model .*: missing 1.weight, 1.bias, 1.running_mean.*; unexpected 0.bias",
    ):
        fit(tiny_net(bn=True), train, val, TrainConfig(epochs=2), run_dir=run, resume=True, progress=False)
    wider = torch.nn.Sequential(*tiny_net())
    wider[-1] = torch.nn.Linear(16, 5)
    with pytest.raises(CheckpointError, match=r"shape 6.weight: checkpoint \(4, 16\) vs model \(5, 16\)"):
        fit(wider, train, val, TrainConfig(epochs=2), run_dir=run, resume=True, progress=False)


def test_a_torn_checkpoint_pair_is_detected(one_epoch_run) -> None:
    run, train, val = one_epoch_run
    weights = load_file(run / "last.safetensors")
    save_file(weights, run / "last.safetensors", metadata={"epoch": "2"})  # killed between the two writes
    with pytest.raises(CheckpointError, match="from epoch 2 but trainer_state.pt from epoch 1"):
        fit(tiny_net(), train, val, TrainConfig(epochs=2), run_dir=run, resume=True, progress=False)


class Evil:
    pass


def test_trainer_state_is_never_unpickled(one_epoch_run) -> None:
    run, train, val = one_epoch_run
    torch.save({"epoch": 1, "payload": Evil()}, run / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt or unsafe to load"):
        fit(tiny_net(), train, val, TrainConfig(epochs=2), run_dir=run, resume=True, progress=False)


def test_resume_refuses_another_number_of_batches_per_epoch(one_epoch_run) -> None:
    run, _, _ = one_epoch_run
    train, val = loaders(32)
    with pytest.raises(ConfigError, match="trained with 4 batches per epoch, this loader has 8"):
        fit(tiny_net(), train, val, TrainConfig(epochs=2), run_dir=run, resume=True, progress=False)


def test_log_is_reconciled_with_the_checkpoint(tmp_path) -> None:
    history = [{"kind": "epoch", "epoch": 1, "v": 1}, {"kind": "epoch", "epoch": 2, "v": 2}]
    lines = [
        '{"kind": "note", "text": "start"}',
        json.dumps(history[0]),
        json.dumps(history[0]),
        '{"kind": "epoch", "epoch": 3, "v": 9}',
        '{"kind": "ep',
    ]
    (tmp_path / "log.jsonl").write_text("\n".join(lines))
    reconcile_epochs(tmp_path, history)  # epoch 2's line was lost, epoch 3 is not in the checkpoint
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == [{"kind": "note", "text": "start"}, *history]
