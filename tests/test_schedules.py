"""Per-iteration learning-rate schedules against hand-computed values, and piecewise parsing errors."""

import math

import pytest

from prunekit.errors import ConfigError
from prunekit.train import LRSchedule, TrainConfig, parse_piecewise


def schedule(steps_per_epoch: int, **cfg) -> LRSchedule:
    return LRSchedule.from_config(TrainConfig(**cfg), steps_per_epoch)


def test_parse_piecewise() -> None:
    assert parse_piecewise("0:0.01,60:0.001,90:0.0001") == [(0, 0.01), (60, 0.001), (90, 0.0001)]
    assert parse_piecewise(" 0 : 1e-1 , 5:0") == [(0, 0.1), (5, 0.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0:0.01,60", r"'0:0.01,60': item '60' at position 7 is not EPOCH:LR"),
        ("a:1", r"'a:1': item 'a:1' at position 0: epoch 'a' is not a whole number"),
        ("0:0.1,30:x", r"item '30:x' at position 6: lr 'x' is not a number"),
        ("5:0.1", r"position 0: the first epoch must be 0"),
        ("0:0.1,30:0.01,20:0.001", r"position 14: epochs must increase \(epoch 20 after 30\)"),
        ("0:0.1,0:0.01", r"position 6: epochs must increase"),
        ("0:-0.1", r"lr must be a finite number ≥ 0"),
    ],
)
def test_bad_piecewise_strings_show_the_string_and_position(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_piecewise(text)
    with pytest.raises(ConfigError, match=message):  # the config refuses it up front, not at epoch 60
        TrainConfig(schedule="piecewise", piecewise=text)


def test_piecewise_schedule_needs_its_string() -> None:
    with pytest.raises(ConfigError, match="item '' at position 0 is not EPOCH:LR"):
        parse_piecewise("")
    with pytest.raises(ConfigError, match='schedule "piecewise" needs piecewise'):
        TrainConfig(schedule="piecewise", piecewise="")
    with pytest.raises(ConfigError, match="schedule is 'cosine'; set schedule: piecewise"):
        TrainConfig(schedule="cosine", piecewise="0:0.1")


def test_piecewise_lr_holds_from_each_epoch_on() -> None:
    s = schedule(2, epochs=100, schedule="piecewise", piecewise="0:0.01,60:0.001,90:0.0001")
    assert [s(0), s(119), s(120), s(179), s(180), s(199)] == [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]


def test_multistep_multiplies_by_gamma_at_each_milestone() -> None:
    s = schedule(5, epochs=10, lr=1.0, schedule="multistep", milestones=[3, 6], gamma=0.1)
    assert s(0) == 1.0 and s(14) == 1.0  # epochs 0..2
    assert s(15) == pytest.approx(0.1) and s(29) == pytest.approx(0.1)
    assert s(30) == pytest.approx(0.01) and s(49) == pytest.approx(0.01)


def test_constant() -> None:
    s = schedule(3, epochs=4, lr=0.3, schedule="constant")
    assert {s(i) for i in range(12)} == {0.3}


def test_cosine_is_smooth_per_step_and_reaches_zero_at_the_end() -> None:
    s = schedule(10, epochs=4, lr=2.0, schedule="cosine")
    assert s(0) == 2.0
    assert s(10) == pytest.approx(1 + math.sqrt(2) / 2)  # 2 · ½(1 + cos(π/4))
    assert s(20) == pytest.approx(1.0)
    assert s(39) == pytest.approx(1 - math.cos(math.pi / 40))  # last step: small but not zero
    assert s(40) == pytest.approx(0.0, abs=1e-15)
    values = [s(i) for i in range(41)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_linear_warmup_then_cosine_over_the_remaining_steps() -> None:
    s = schedule(10, epochs=4, lr=2.0, schedule="cosine", warmup_epochs=1)
    assert [s(0), s(4), s(9)] == pytest.approx([0.2, 1.0, 2.0])  # (step + 1) / 10 of the peak
    assert s(10) == 2.0
    assert s(25) == pytest.approx(1.0)  # halfway through the 30 post-warm-up steps
    assert s(40) == pytest.approx(0.0, abs=1e-15)


def test_warmup_scales_epoch_schedules_and_may_be_fractional() -> None:
    s = schedule(4, epochs=4, lr=1.0, schedule="multistep", milestones=[1], warmup_epochs=1.5)  # 6 steps
    assert [s(0), s(3), s(4), s(5), s(6)] == pytest.approx([1 / 6, 4 / 6, 0.1 * 5 / 6, 0.1, 0.1])


def test_a_loader_without_batches_is_refused() -> None:
    with pytest.raises(ConfigError, match="yields no batches"):
        schedule(0, epochs=2)
