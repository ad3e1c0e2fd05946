"""Learning-rate schedules as functions of the optimizer step, so warm-up and cosine are smooth per iteration.

Epoch-based schedules (multistep, piecewise) change value at the first step of an epoch. Warm-up scales the
scheduled value linearly over the first `warmup_epochs` worth of steps: step s gets (s + 1) / warmup_steps,
so the first step already moves. Cosine anneals over the steps after warm-up and reaches 0 at the end.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from prunekit.errors import ConfigError
from prunekit.train.config import TrainConfig, parse_piecewise


@dataclass(frozen=True)
class LRSchedule:
    """`schedule(step) -> lr` for optimizer step `step` (0-based, counted over the whole run)."""

    kind: str
    base_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    pieces: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int) -> LRSchedule:
        if steps_per_epoch < 1:
            raise ConfigError("the training loader yields no batches; is the dataset smaller than one batch?")
        return cls(
            kind=cfg.schedule,
            base_lr=cfg.lr,
            steps_per_epoch=steps_per_epoch,
            total_steps=cfg.epochs * steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            milestones=tuple(cfg.milestones),
            gamma=cfg.gamma,
            pieces=tuple(parse_piecewise(cfg.piecewise))
            if cfg.schedule == "piecewise" and cfg.piecewise
            else (),
        )

    def __call__(self, step: int) -> float:
        warm = (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
        return warm * self._scheduled(step)

    def _scheduled(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "multistep":
            return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.kind == "piecewise":
            return self.pieces[bisect.bisect_right(self.pieces, epoch, key=lambda piece: piece[0]) - 1][1]
        if self.kind == "cosine":
            if step < self.warmup_steps:
                return self.base_lr
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ConfigError(f"unknown schedule {self.kind!r}")
