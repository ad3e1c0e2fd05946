"""TrainConfig: every optimisation setting of a run, validated on construction and YAML round-trippable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from prunekit.errors import ConfigError, unknown_name
from prunekit.train.schedules import parse_piecewise

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("multistep", "cosine", "piecewise", "constant")
AMP_MODES = ("auto", "bf16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")
_FLOAT_FIELDS = (
    "lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing",
    "kd_temperature", "kd_alpha",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Optimisation settings. Loaders are built by the caller; `batch_size` is only recorded here.

    `piecewise` ("0:0.01,60:0.001" = lr from that epoch on) replaces `lr` when `schedule="piecewise"`.
    With a teacher the loss is `kd_alpha·T²·KL(teacher ‖ student at temperature T) + (1 − kd_alpha)·CE`.
    `amp="auto"` means bf16 autocast on CUDA and none on CPU; `channels_last="auto"` means on for
    any model with convolutions (CPU and GPU).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    piecewise: str | None = None
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    seed: int = 0
    eval_every: int = 1
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        # YAML and the CLI hand us strings ("1e-3" is a str in YAML 1.1) and bools ("off" is False).
        for name in _FLOAT_FIELDS:
            setattr(self, name, _number(name, getattr(self, name)))
        for name in ("epochs", "batch_size", "seed", "eval_every"):
            setattr(self, name, _integer(name, getattr(self, name)))
        for name in ("nesterov", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.grad_clip is not None:
            self.grad_clip = _number("grad_clip", self.grad_clip)
        self.amp = _mode("amp", self.amp, AMP_MODES, on="bf16")
        self.channels_last = _mode("channels_last", self.channels_last, CHANNELS_LAST_MODES, on="on")
        self.milestones = _milestones(self.milestones)
        self._validate()

    def _validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", str(self.optimizer), OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", str(self.schedule), SCHEDULES)
        _check_range("lr", self.lr, low=0.0, low_open=True)
        _check_range("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_range("weight_decay", self.weight_decay, low=0.0)
        _check_range("gamma", self.gamma, low=0.0, low_open=True)
        _check_range("warmup_epochs", self.warmup_epochs, low=0.0, high=float(self.epochs))
        _check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        _check_range("kd_temperature", self.kd_temperature, low=0.0, low_open=True)
        _check_range("kd_alpha", self.kd_alpha, low=0.0, high=1.0)
        if self.grad_clip is not None:
            _check_range("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be at least 1, got {self.eval_every}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.schedule == "piecewise":
            if not self.piecewise:
                raise ConfigError('schedule "piecewise" needs piecewise, e.g. "0:0.1,60:0.01,90:0.001"')
            parse_piecewise(self.piecewise)
        elif self.piecewise:
            raise ConfigError(
                f"piecewise={self.piecewise!r} is set but schedule is {self.schedule!r}; "
                "set schedule: piecewise or drop piecewise"
            )
        if self.milestones and self.schedule != "multistep":
            raise ConfigError(
                f"milestones are set but schedule is {self.schedule!r}; set schedule: multistep"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in valid]
        if unknown:
            raise ConfigError(f"unknown training option {unknown[0]!r}; valid options: {', '.join(valid)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain ints/floats/strings/lists only, so `yaml.safe_dump` and `from_dict` round-trip it."""
        return asdict(self)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return number


def _integer(name: str, value: Any) -> int:
    number = _number(name, value)
    if number != int(number):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _mode(name: str, value: Any, valid: tuple[str, ...], *, on: str) -> str:
    if isinstance(value, bool):
        return on if value else "off"
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}")
    return str(value)


def _milestones(value: Any) -> list[int]:
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value or ())
    milestones = [_integer("milestones", v) for v in items]
    if any(m < 1 for m in milestones) or any(
        b <= a for a, b in zip(milestones, milestones[1:], strict=False)
    ):
        raise ConfigError(f"milestones must be increasing epochs ≥ 1, got {milestones}")
    return milestones


def _check_range(
    name: str,
    value: float,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        if high == math.inf:
            bound = f"{'>' if low_open else '≥'} {low:g}"
        else:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be {bound}, got {value:g}")
