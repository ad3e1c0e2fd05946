"""Measured inference latency of the deployment form, with the noise of a shared machine kept visible.

Models are timed round by round (A B C A B C ...) so that drift and neighbours' load hit all of them
alike; the result is the median of all samples with its interquartile range.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure.allocator import steady_allocator
from prunekit.measure.deployment import DeployMode, deploy

_MODE_WORDS = {
    "freeze": "BN folded + torch.jit.freeze",
    "compile": "BN folded + torch.compile",
    "eager": "BN folded, eager",
    "raw": "as given, eager",
}


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float  # per forward of one batch
    spread_ms: float  # interquartile range (p75 - p25) of the samples
    per_image_ms: float
    samples: tuple[float, ...]  # ms per timed forward, in the order measured
    batch_size: int
    threads: int
    mode: str  # a deploy mode, or "raw" for the model as given (deployed=False)
    device: str
    rounds: int = 1  # `samples` holds `rounds` consecutive equal chunks, one per interleaving round

    def __str__(self) -> str:
        thread_word = "thread" if self.threads == 1 else "threads"
        return (
            f"{self.median_ms:.3f} ms median (IQR {self.spread_ms:.3f} ms, {self.per_image_ms:.3f} ms/image, "
            f"{len(self.samples)} samples) at batch {self.batch_size}, {self.threads} {thread_word}, "
            f"{self.device}, {_MODE_WORDS[self.mode]}"
        )

    @property
    def stats(self) -> LatencyStats:
        n = len(self.samples) // self.rounds if self.rounds > 1 else 0
        chunks = [self.samples[i * n : (i + 1) * n] for i in range(self.rounds)] if n else []
        return LatencyStats.of_samples(self.samples, tuple(statistics.median(c) for c in chunks))


@dataclass(frozen=True)
class LatencyStats:
    """Median and spread of repeated timings of one model at one batch size (ms per forward)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    samples: int
    # Median of each interleaving round, when timed round by round beside other models (else empty).
    round_medians: tuple[float, ...] = ()

    @classmethod
    def of_samples(cls, samples: Sequence[float], round_medians: Sequence[float] = ()) -> LatencyStats:
        if not samples:
            raise ConfigError("latency statistics need at least one sample")
        ordered = sorted(float(s) for s in samples)
        return cls(
            median_ms=statistics.median(ordered),
            p25_ms=_quantile(ordered, 0.25),
            p75_ms=_quantile(ordered, 0.75),
            min_ms=ordered[0],
            max_ms=ordered[-1],
            samples=len(ordered),
            round_medians=tuple(float(m) for m in round_medians),
        )

    @classmethod
    def of_record(cls, record: Mapping[str, float]) -> LatencyStats:
        """From `to_record()`'s JSON form (as stored in a run's summary.json)."""
        try:
            return cls(
                **{f: record[f] for f in ("median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms")},
                samples=int(record["samples"]),
                round_medians=tuple(record.get("round_medians", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"latency record {dict(record)} lacks {exc}") from None

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (IQR {self.p25_ms:.3f}–{self.p75_ms:.3f}, n={self.samples})"


@dataclass(frozen=True)
class Speedup:
    """How much faster a model is than a reference, with the range the timing noise allows.

    `ratio` compares medians. For models timed interleaved in one process (`paired`), `low`/`high` are the
    smallest and largest ratio of the two models' medians within one round: load that hits a round hits
    both models, so the ratios of one round are comparable while absolute times are not. Otherwise they
    compare the quartiles the slow way round (reference p25 over model p75, reference p75 over model
    p25). When the range holds 1.0 the measurement cannot tell the models apart: within the noise.
    """

    ratio: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        return self.low <= 1.0 <= self.high

    def __str__(self) -> str:
        if self.within_noise:
            return f"≈1× (noise: {self.low:.2f}–{self.high:.2f}×)"
        return f"{self.ratio:.2f}× ({self.low:.2f}–{self.high:.2f}×)"


def speedup(reference: LatencyStats, model: LatencyStats, *, paired: bool = False) -> Speedup:
    """Speed-up of `model` over `reference` (> 1: `model` is faster) and its noise range. `paired`: the
    two were timed round by round in the same `compare_latency` call, so their rounds can be paired."""
    if min(reference.min_ms, model.min_ms) <= 0:
        raise ConfigError("speed-ups need positive latencies")
    rounds = len(reference.round_medians)
    if paired and rounds >= 2 and len(model.round_medians) == rounds:
        ratios = [r / m for r, m in zip(reference.round_medians, model.round_medians, strict=True)]
        return Speedup(reference.median_ms / model.median_ms, min(ratios), max(ratios))
    return Speedup(
        ratio=reference.median_ms / model.median_ms,
        low=reference.p25_ms / model.p75_ms,
        high=reference.p75_ms / model.p25_ms,
    )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summarise(
    samples: list[float], batch_size: int, threads: int, mode: str, device: str, rounds: int
) -> LatencyResult:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    return LatencyResult(
        median_ms=median,
        spread_ms=_quantile(ordered, 0.75) - _quantile(ordered, 0.25),
        per_image_ms=median / batch_size,
        samples=tuple(samples),
        batch_size=batch_size,
        threads=threads,
        mode=mode,
        device=device,
        rounds=rounds,
    )


def compare_latency(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    threads: int = 1,
    deployed: bool = True,
    mode: DeployMode = "freeze",
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, LatencyResult]:
    """Latency of each model on a `(batch_size, *input_shape)` input, interleaved over `rounds` rounds
    of `repeats // rounds` timed forwards each (at least one), after `warmup` untimed forwards each.

    `deployed=False` times the model as given (eval mode, BN not folded). The models themselves are not
    modified. The torch CPU thread count is set to `threads` for the measurement and restored after.
    glibc's malloc is set to keep freed memory for the rest of the process (`allocator.steady_allocator`).
    """
    if batch_size < 1 or threads < 1 or repeats < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(
            f"latency needs batch_size, threads, repeats, rounds >= 1 and warmup >= 0; got "
            f"batch_size={batch_size}, threads={threads}, repeats={repeats}, rounds={rounds}, warmup={warmup}"
        )
    device = torch.device(device)
    steady_allocator()  # page faults of fresh activations are not the model's latency
    per_round = max(1, repeats // rounds)
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
            for name, model in models.items():
                if deployed:
                    runners[name] = deploy(model, x, mode)
                else:
                    runners[name] = copy.deepcopy(model).eval().to(device)
                for _ in range(warmup):
                    runners[name](x)
            samples: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(rounds):
                for name, run in runners.items():
                    run(x)  # the previous model evicted this one's weights from cache
                    for _ in range(per_round):
                        sync()
                        start = time.perf_counter()
                        run(x)
                        sync()
                        samples[name].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous_threads)
    shown_mode = mode if deployed else "raw"
    return {
        name: _summarise(s, batch_size, threads, shown_mode, str(device), rounds)
        for name, s in samples.items()
    }


def latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    threads: int = 1,
    deployed: bool = True,
    mode: DeployMode = "freeze",
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    device: str | torch.device = "cpu",
) -> LatencyResult:
    """Latency of one model; see `compare_latency` for the protocol."""
    return compare_latency(
        {"model": model},
        input_shape,
        batch_size=batch_size,
        threads=threads,
        deployed=deployed,
        mode=mode,
        warmup=warmup,
        repeats=repeats,
        rounds=rounds,
        device=device,
    )["model"]
