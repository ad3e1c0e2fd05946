"""TrainConfig, the losses and metrics by hand, and fit/evaluate on tiny synthetic data."""

import json
import math
import sys

import pytest
import torch
import yaml
from torch import nn

from prunekit.errors import ConfigError
from prunekit.train import TrainConfig, evaluate, fit, training_loss
from prunekit.train.loop import autocast_dtype
from prunekit.train.metrics import topk_correct
from train_helpers import loaders, tiny_net

# --- config -------------------------------------------------------------------------------------------


def test_config_round_trips_through_yaml() -> None:
    cfg = TrainConfig(
        epochs=7,
        optimizer="adam",
        lr=3e-4,
        schedule="multistep",
        milestones=[2, 5],
        gamma=0.5,
        warmup_epochs=0.5,
        label_smoothing=0.1,
        amp="bf16",
        channels_last="on",
        grad_clip=2.0,
    )
    text = yaml.safe_dump(cfg.to_dict())
    assert TrainConfig.from_dict(yaml.safe_load(text)) == cfg


def test_config_accepts_what_yaml_and_the_cli_hand_over() -> None:
    # YAML 1.1 reads "1e-3" as a string and on/off as booleans; the CLI passes milestones as a list.
    cfg = TrainConfig.from_dict(
        yaml.safe_load(
            "lr: 1e-3\namp: off\nchannels_last: on\nschedule: multistep\nmilestones: 30,60\nepochs: 90\n"
        )
    )
    assert (cfg.lr, cfg.amp, cfg.channels_last, cfg.milestones) == (0.001, "off", "on", [30, 60])


def test_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown training option 'learning_rate'; valid options: epochs, .*lr"
    ):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": -0.1}, r"lr must be > 0, got -0.1"),
        ({"lr": "fast"}, r"lr must be a number, got 'fast'"),
        ({"optimizer": "adagrad"}, r"unknown optimizer 'adagrad'; valid optimizers: adam, sgd"),
        (
            {"schedule": "step"},
            r"unknown schedule 'step'; valid schedules: constant, cosine, multistep, piecewise",
        ),
        ({"epochs": 0}, r"epochs must be at least 1, got 0"),
        ({"epochs": 2.5}, r"epochs must be a whole number, got 2.5"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1"),
        ({"weight_decay": -1e-4}, r"weight_decay must be ≥ 0"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"kd_alpha": 1.5}, r"kd_alpha must be in \[0, 1\], got 1.5"),
        ({"warmup_epochs": 20}, r"warmup_epochs must be in \[0, 10\], got 20"),
        ({"amp": "fp16"}, r"amp must be one of auto, bf16, off; got 'fp16'"),
        ({"nesterov": True, "optimizer": "adam"}, r"nesterov needs optimizer 'sgd' with momentum > 0"),
        (
            {"milestones": [5, 3], "schedule": "multistep"},
            r"milestones must be increasing epochs ≥ 1, got \[5, 3\]",
        ),
        ({"milestones": [5]}, r"milestones are set but schedule is 'cosine'"),
        ({"grad_clip": 0}, r"grad_clip must be > 0"),
        ({"compile": "yes"}, r"compile must be true or false, got 'yes'"),
    ],
)
def test_invalid_values_say_what_is_wrong(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


# --- losses and metrics by hand ------------------------------------------------------------------------


def test_kd_loss_matches_the_hand_computed_value() -> None:
    # T = 2: student logits / T = [ln 3, 0] → p_s = [3/4, 1/4]; teacher [0, 0] → p_t = [1/2, 1/2].
    # KL(p_t ‖ p_s) = ½ ln(½ / ¾) + ½ ln(½ / ¼) = ½ ln(4/3).
    # CE at T = 1: p = [9/10, 1/10], target 0 → ln(10/9).
    student = torch.tensor([[2 * math.log(3), 0.0]])
    teacher = torch.zeros(1, 2)
    loss = training_loss(student, torch.tensor([0]), teacher_logits=teacher, temperature=2.0, alpha=0.9)
    expected = 0.9 * 4 * 0.5 * math.log(4 / 3) + 0.1 * math.log(10 / 9)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_matches_the_hand_computed_value() -> None:
    # p = [3/4, 1/4]; target 0 smoothed with ε = 0.2 over 2 classes → [0.9, 0.1].
    loss = training_loss(torch.tensor([[math.log(3), 0.0]]), torch.tensor([0]), label_smoothing=0.2)
    assert loss.item() == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), rel=1e-6)


def logits_table() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows are permutations of 5..0; the target's logit is 5 (rank 1), 4 (rank 2), 0 (rank 6), 1 (rank 5)."""
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [4, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5]])
    return logits, torch.tensor([0, 0, 0, 0])


def test_topk_correct_counts_by_hand() -> None:
    logits, y = logits_table()
    assert topk_correct(logits, y, (1, 2, 5, 6)).tolist() == [1, 2, 3, 4]
    assert topk_correct(logits[:, :3], y, (1, 5)).tolist() == [1, 4]  # top-5 of 3 classes: every sample


def test_evaluate_by_hand() -> None:
    logits, y = logits_table()
    loader = [(logits[:2], y[:2]), (logits[2:], y[2:])]
    out = evaluate(nn.Flatten(), loader)  # Flatten is the identity on (N, 6): logits in, out
    lse = math.log(sum(math.exp(k) for k in range(6)))
    assert out == pytest.approx({"loss": lse - (5 + 4 + 0 + 1) / 4, "top1": 25.0, "top5": 75.0, "samples": 4})


# --- fit -----------------------------------------------------------------------------------------------


def test_fit_learns_and_logs_one_line_per_epoch(tmp_path, capsys) -> None:
    train, val = loaders(32)
    model = tiny_net(bn=True)
    result = fit(model, train, val, TrainConfig(epochs=3, lr=0.1), run_dir=tmp_path, progress=None)
    lines = capsys.readouterr().out.splitlines()  # stdout is no TTY under pytest: plain lines
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == result.history
    assert [r["epoch"] for r in log] == [1, 2, 3] and {r["kind"] for r in log} == {"epoch"}
    assert {
        "time",
        "lr",
        "train_loss",
        "train_top1",
        "images_per_s",
        "val_loss",
        "val_top1",
        "val_top5",
    } <= set(log[0])
    assert result.epochs_run == 3
    assert result.final_top1 == log[-1]["val_top1"] == evaluate(model, val)["top1"]
    assert result.best_top1 == max(r["val_top1"] for r in log)
    assert result.final_top1 > 50  # 4 classes: chance is 25 %
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert f"val loss {log[-1]['val_loss']:.4f} top-1 {log[-1]['val_top1']:.2f}%" in lines[-1]


def test_progress_false_is_silent_and_a_tty_gets_the_rich_bar(monkeypatch, capsys) -> None:
    train, val = loaders(64)
    fit(tiny_net(), train, val, TrainConfig(epochs=1), progress=False)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    fit(tiny_net(), train, val, TrainConfig(epochs=2))
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "img/s" in out and "\x1b[" in out  # ANSI: rich drew on the "terminal"


def test_eval_every_skips_validation_but_always_evaluates_the_last_epoch() -> None:
    train, val = loaders(64)
    result = fit(tiny_net(), train, val, TrainConfig(epochs=3, eval_every=2), progress=False)
    assert ["val_top1" in r for r in result.history] == [False, True, True]


class MaskFilterZero:
    """Re-applies a mask after every step, as magnitude-pruning methods do."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def after_step(self, model: nn.Module, step: int) -> None:
        self.steps.append(step)
        with torch.no_grad():
            model[0].weight[0].zero_()


def test_after_step_runs_after_every_optimizer_step() -> None:
    train, val = loaders(32)
    model, method = tiny_net(), MaskFilterZero()
    fit(model, train, val, TrainConfig(epochs=2), method=method, progress=False)
    assert method.steps == list(range(1, 2 * len(train) + 1))
    assert torch.count_nonzero(model[0].weight[0]) == 0 and torch.count_nonzero(model[0].weight[1]) > 0


def test_penalty_enters_the_gradient() -> None:
    # ∇(½·wd·‖w‖²) = wd·w is exactly what SGD's weight decay adds to the gradient.
    train, val = loaders(32)
    torch.manual_seed(1)
    a, b = tiny_net(), tiny_net()
    b.load_state_dict(a.state_dict())
    fit(a, train, val, TrainConfig(epochs=2, weight_decay=1e-2, schedule="constant"), progress=False)

    class Decay:
        def penalty(self, model: nn.Module) -> torch.Tensor:
            return 0.5 * 1e-2 * sum((p * p).sum() for p in model.parameters())

    result = fit(
        b,
        train,
        val,
        TrainConfig(epochs=2, weight_decay=0.0, schedule="constant"),
        method=Decay(),
        progress=False,
    )
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5)
    assert result.history[0]["train_penalty"] > 0


def test_distillation_with_alpha_zero_is_plain_cross_entropy() -> None:
    train, val = loaders(32)
    teacher = tiny_net()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(2)
    a, b, c = tiny_net(), tiny_net(), tiny_net()
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    fit(a, train, val, TrainConfig(epochs=1), progress=False)
    fit(b, train, val, TrainConfig(epochs=1, kd_alpha=0.0), teacher=teacher, progress=False)
    fit(c, train, val, TrainConfig(epochs=1, kd_alpha=0.9), teacher=teacher, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.allclose(a[-1].weight, c[-1].weight)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_amp_auto_is_off_on_cpu_and_bf16_autocasts_on_cpu() -> None:
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    train, val = loaders(64)
    seen: list[torch.dtype] = []
    for amp in ("auto", "bf16"):
        model = tiny_net()
        model[-1].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        result = fit(model, train, val, TrainConfig(epochs=1, amp=amp), progress=False)
        assert math.isfinite(result.history[0]["train_loss"]) and result.final_top1 is not None
    n = len(train) + len(val)  # forward passes of one epoch: training steps, then evaluation batches
    assert seen[:n] == [torch.float32] * n and seen[n:] == [torch.bfloat16] * n


def test_channels_last_on_cpu_trains_and_checkpoints(tmp_path) -> None:
    train, val = loaders(64)
    model = tiny_net(bn=True)
    fit(model, train, val, TrainConfig(epochs=1, channels_last="on"), run_dir=tmp_path, progress=False)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    fresh = tiny_net(bn=True)
    from prunekit.train.trainer_state import load_checkpoint

    load_checkpoint(tmp_path, fresh)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )


def test_grad_clip_bounds_every_update() -> None:
    train, val = loaders(32)
    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    clip, lr = 1e-6, 0.1
    cfg = TrainConfig(epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant", grad_clip=clip)
    fit(model, train, val, cfg, progress=False)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert moved.norm() <= len(train) * lr * clip * (1 + 1e-4)  # each step moves by at most lr·clip
    assert moved.norm() > 0
