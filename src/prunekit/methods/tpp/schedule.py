"""The growing penalty factor λ of TPP and GReg over the iterations of the sparsify stage (specs/tpp.md
§2.5, §2.6, §6.2, §6.3).

Iteration t counts optimiser steps from 0 (the hooks' step s is t + 1). Every `interval` iterations
(t mod K_u = 0, t = 0 included) λ is updated for every group that has not finished; a group finishes when
λ reaches the limit, or — with the magnitude-ratio stop — when the EMA of mean|w| kept / mean|w| removed
reaches its limit. When every group has finished, the hold ("stabilize") phase starts at t_stab with λ
frozen; the filters are removed after the step where t − t_stab = `hold`.

Counts of updates are integers, so the schedule's length is exact arithmetic, not accumulated floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Relative slack when asking how many steps of size Δ fit in a distance (1e-4 · 10,000 is 1 in exact math).
_EPS = 1e-6


@dataclass(frozen=True)
class Ramp:
    """λ after the k-th update (k ≥ 1) is ``first + step·(k − 1)``; the ramp ends at the first update where λ
    reaches `limit` (``≥``; ``>`` when `strict`).

    Released TPP: first 0 (λ = Δ·t/K_u), ``≥``. GReg and the paper-era TPP add Δ at every update (first = Δ)
    and end when λ exceeds the limit (``>``)."""

    step: float
    limit: float
    first: float = 0.0
    strict: bool = False

    def value(self, k: int) -> float:
        return self.first + self.step * (k - 1) if k > 0 else 0.0

    def updates(self) -> int:
        """Updates (counting the first) until the ramp ends."""
        distance = (self.limit - self.first) / self.step
        if self.strict:
            more = math.floor(distance + _EPS) + 1 if distance >= -_EPS else 0
        else:
            more = max(0, math.ceil(distance - _EPS))
        return more + 1

    def finished(self, k: int) -> bool:
        return k >= self.updates()


@dataclass
class Clock:
    """Per group: updates applied, λ and whether it finished; and when the hold phase started."""

    ramp: Ramp
    interval: int
    groups: int
    counts: list[int] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    ema: list[float | None] = field(default_factory=list)
    t_stab: int | None = None

    def __post_init__(self) -> None:
        self.counts = [0] * self.groups
        self.stopped = [False] * self.groups
        self.ema = [None] * self.groups

    def lam(self, g: int) -> float:
        return self.ramp.value(self.counts[g])

    def done(self, g: int) -> bool:
        return self.stopped[g] or self.ramp.finished(self.counts[g])

    def due(self, t: int) -> bool:
        return self.t_stab is None and t % self.interval == 0

    def update(
        self,
        t: int,
        ratios: Sequence[float] | None = None,
        limit: float | None = None,
        together: bool = True,
    ) -> None:
        """The update at iteration `t` (call only when `due`). `ratios`: each group's magnitude ratio now,
        for the stop at `limit`: all groups at once (`together`, TPP/GReg-1) or each on its own (GReg-2)."""
        for g in range(self.groups):
            if not self.done(g):
                self.counts[g] += 1
        if ratios is not None and limit is not None:
            for g, ratio in enumerate(ratios):
                self.ema[g] = ratio if self.ema[g] is None else 0.9 * self.ema[g] + 0.1 * ratio
            reached = [ema is not None and ema >= limit for ema in self.ema]
            if together and all(reached):
                self.stopped = [True] * self.groups
            elif not together:
                self.stopped = [s or r for s, r in zip(self.stopped, reached, strict=True)]
        if all(self.done(g) for g in range(self.groups)):
            self.t_stab = t


def growth_iterations(ramp: Ramp, interval: int) -> int:
    """t_stab without the magnitude-ratio stop: the iteration of the ramp's last update."""
    return (ramp.updates() - 1) * interval


def stage_steps(t_stab: int, hold: int) -> int:
    """Optimiser steps of the whole stage: iterations 0 … t_stab + hold."""
    return t_stab + hold + 1
