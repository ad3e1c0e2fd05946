"""TrainConfig: every optimisation setting of a run, validated on construction and YAML round-trippable.

Each field's `metadata["help"]` is its documentation; the CLI generates its options and YAML keys from
these fields. `schedules` builds on this module, never the other way round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from prunekit.errors import ConfigError, unknown_name

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

    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "training batch size"})
    optimizer: str = field(default="sgd", metadata={"help": " | ".join(OPTIMIZERS)})
    lr: float = field(default=0.1, metadata={"help": "learning rate the schedule starts from"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum (SGD only)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 weight decay"})
    schedule: str = field(default="cosine", metadata={"help": "lr schedule: " + " | ".join(SCHEDULES)})
    milestones: list[int] = field(
        default_factory=list,
        metadata={"help": "multistep: epochs where lr is multiplied by gamma, e.g. 50,100"},
    )
    gamma: float = field(default=0.1, metadata={"help": "multistep: lr factor at each milestone"})
    piecewise: str | None = field(
        default=None, metadata={"help": 'piecewise: lr from each epoch on, e.g. "0:0.01,60:0.001,90:0.0001"'}
    )
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear lr warm-up, in (fractional) epochs"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    kd_temperature: float = field(default=4.0, metadata={"help": "knowledge distillation: temperature T"})
    kd_alpha: float = field(default=0.9, metadata={"help": "knowledge distillation: weight of the KL term"})
    amp: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA) | bf16 | off"})
    channels_last: str = field(
        default="auto", metadata={"help": "auto (on for models with convolutions) | on | off"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and augmentation"})
    eval_every: int = field(default=1, metadata={"help": "validate every N epochs (the last one always)"})
    grad_clip: float | None = field(default=None, metadata={"help": "clip the gradient norm to this value"})

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


def parse_piecewise(text: str) -> list[tuple[int, float]]:
    """`"0:0.01,60:0.001"` → `[(0, 0.01), (60, 0.001)]`: lr from that epoch on; starts at 0, increasing."""
    pieces: list[tuple[int, float]] = []
    pos = 0
    for item in text.split(","):
        where = f"piecewise schedule {text!r}: item {item.strip()!r} at position {pos}"
        epoch_s, sep, lr_s = item.partition(":")
        if not sep:
            raise ConfigError(f'{where} is not EPOCH:LR (expected e.g. "0:0.1,60:0.01,90:0.001")')
        try:
            epoch = int(epoch_s)
        except ValueError:
            raise ConfigError(f"{where}: epoch {epoch_s.strip()!r} is not a whole number") from None
        try:
            lr = float(lr_s)
        except ValueError:
            raise ConfigError(f"{where}: lr {lr_s.strip()!r} is not a number") from None
        if not math.isfinite(lr) or lr < 0:
            raise ConfigError(f"{where}: lr must be a finite number ≥ 0")
        if not pieces and epoch != 0:
            raise ConfigError(f"{where}: the first epoch must be 0 (the lr from the start)")
        if pieces and epoch <= pieces[-1][0]:
            raise ConfigError(f"{where}: epochs must increase (epoch {epoch} after {pieces[-1][0]})")
        pieces.append((epoch, lr))
        pos += len(item) + 1
    return pieces
