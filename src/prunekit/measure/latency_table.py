"""A per-layer latency lookup table measured on this machine, cached on disk (NetAdapt, HALP).

A latency budget visits many width configurations; timing each pruned model would take minutes, so every
conv/linear layer shape the search visits is timed once, on its own, in the deployed form (a frozen
TorchScript conv with a bias, which is what a BN-folded conv becomes), and the model's predicted latency is
the sum over its layers. The search then times its candidates for real and corrects the table's target
(`methods.latency_budget.land_on_measurement`), so the prediction guides, it is not trusted.

The cache is one JSON file per (machine, torch version, device, threads, batch size) under
``$PRUNEKIT_CACHE_DIR`` (default ``~/.cache/prunekit``), keyed inside by the layer's shape. A file written on
another machine, by another torch version, or in an older format is ignored and rewritten (the fingerprint
is stored in the file and compared on read), so copying a cache between machines never yields stale
numbers. `preferred_round_to` (``--round-to auto``) lives here too: it sweeps one conv's width with the same
timer and caches its answer beside the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure.allocator import steady_allocator

#: Bump when what a cached number means changes (timing protocol, deployed form). 3: fastest sample;
#: 4: timed with freed memory kept in the process (`allocator.steady_allocator`).
TABLE_FORMAT = 4
#: The environment variable that moves the cache (tests point it at a temporary folder).
CACHE_ENV = "PRUNEKIT_CACHE_DIR"


@dataclass(frozen=True, order=True)
class LayerShape:
    """One conv (``kernel`` > (0, 0)) or linear (``kernel == (0, 0)``) call, as the table keys it."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)  # input height, width (1, 1 for linear)

    @property
    def is_linear(self) -> bool:
        return self.kernel == (0, 0)

    def key(self) -> str:
        k = "x".join
        if self.is_linear:
            return f"linear:{self.in_channels}->{self.out_channels}"
        return (
            f"conv:{self.in_channels}->{self.out_channels}:k{k(map(str, self.kernel))}"
            f":s{k(map(str, self.stride))}:p{k(map(str, self.padding))}:d{k(map(str, self.dilation))}"
            f":g{self.groups}:in{k(map(str, self.in_hw))}"
        )

    def macs(self) -> int:
        """Multiply-accumulates per image (the fake timers of tests and the sweep's sanity check use it)."""
        if self.is_linear:
            return self.in_channels * self.out_channels
        h, w = (
            (size + 2 * pad - dil * (k - 1) - 1) // s + 1
            for size, pad, dil, k, s in zip(
                self.in_hw, self.padding, self.dilation, self.kernel, self.stride, strict=True
            )
        )
        return h * w * self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]

    def with_widths(self, in_channels: int, out_channels: int) -> LayerShape:
        groups = self.groups
        if self.groups > 1 and self.groups == self.in_channels == self.out_channels:
            groups = in_channels  # depthwise stays depthwise
        return dataclasses.replace(self, in_channels=in_channels, out_channels=out_channels, groups=groups)


def layer_shape(module: nn.Module, in_hw: tuple[int, int] = (1, 1)) -> LayerShape:
    if isinstance(module, nn.Conv2d):
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        if isinstance(module.padding, str):
            raise ConfigError(f"latency table: padding={module.padding!r} convs are not supported")
        return LayerShape(
            module.in_channels,
            module.out_channels,
            pair(module.kernel_size),
            pair(module.stride),
            pair(module.padding),
            pair(module.dilation),
            module.groups,
            tuple(in_hw),  # type: ignore[arg-type]
        )
    if isinstance(module, nn.Linear):
        return LayerShape(module.in_features, module.out_features)
    raise ConfigError(f"latency table: {type(module).__name__} is not a Conv2d or Linear")


#: A timer: (shape, batch size, threads, device) -> microseconds per forward of one batch.
Timer = Callable[[LayerShape, int, int, str], float]


def time_layer(shape: LayerShape, batch_size: int, threads: int, device: str) -> float:
    """Fastest µs of one layer in the deployed form (frozen TorchScript, with bias) at `batch_size`.

    The fastest sample, not the median: a layer timed alone is measured once and kept, and on a shared
    machine load only ever adds time, in bursts that can cover every sample of a median (a 64→48 conv
    stored 2.6× slower than 64→64 that way); one uncontended sample among many is enough for the minimum."""
    dev = torch.device(device)
    if shape.is_linear:
        layer: nn.Module = nn.Linear(shape.in_channels, shape.out_channels)
        x = torch.randn(batch_size, shape.in_channels)
    else:
        layer = nn.Conv2d(
            shape.in_channels,
            shape.out_channels,
            shape.kernel,
            shape.stride,
            shape.padding,
            shape.dilation,
            shape.groups,
        )
        x = torch.randn(batch_size, shape.in_channels, *shape.in_hw)
    layer, x = layer.eval().to(dev), x.to(dev)
    steady_allocator()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            run = torch.jit.freeze(torch.jit.trace(layer, x))
            for _ in range(3):
                run(x)
            samples = []
            # Enough repeats for ~60 ms of work, at least 10, so that some samples run uncontended.
            start = time.perf_counter()
            run(x)
            once = time.perf_counter() - start
            for _ in range(max(10, min(100, int(0.06 / max(once, 1e-6))))):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                run(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                samples.append((time.perf_counter() - start) * 1e6)
    finally:
        torch.set_num_threads(previous)
    return min(samples)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prunekit")


def machine_fingerprint(device: str) -> dict[str, Any]:
    """What makes a timing valid elsewhere: format, machine, processor, torch build, device name."""
    dev = torch.device(device)
    return {
        "format": TABLE_FORMAT,
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "node": platform.node(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "allocator": steady_allocator(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: a crash never leaves half a table


class LatencyTable:
    """µs per layer shape at one (batch size, threads, device), measured on demand and cached on disk."""

    def __init__(
        self,
        batch_size: int = 1,
        threads: int = 1,
        device: str = "cpu",
        *,
        timer: Timer | None = None,
        directory: str | Path | None = None,
    ) -> None:
        if batch_size < 1 or threads < 1:
            raise ConfigError(
                f"a latency table needs batch size and threads ≥ 1, not {batch_size}, {threads}"
            )
        self.batch_size, self.threads, self.device = batch_size, threads, str(device)
        self._timer = timer
        self.fingerprint = {
            **machine_fingerprint(self.device),
            "batch_size": batch_size,
            "threads": threads,
            # A fake timer's numbers must never be mistaken for measurements (and vice versa).
            "timer": "measured" if timer is None else getattr(timer, "__qualname__", "custom"),
        }
        self.path = Path(directory or cache_dir()) / f"latency-{_digest(self.fingerprint)}.json"
        self.entries: dict[str, float] = self._read()
        self.measured = 0  # shapes timed by this instance (the rest came from the cache)

    def _read(self) -> dict[str, float]:
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(payload, dict) or payload.get("fingerprint") != self.fingerprint:
            return {}  # another machine, torch, format or timer: invalid here
        entries = payload.get("entries", {})
        return {k: float(v) for k, v in entries.items() if isinstance(v, (int, float))}

    def save(self) -> None:
        _write_json(self.path, {"fingerprint": self.fingerprint, "entries": self.entries})

    def invalidate(self) -> None:
        """Forget every cached number (memory and disk): the next lookups measure again."""
        self.entries = {}
        self.path.unlink(missing_ok=True)

    def timer(self) -> Timer:
        return self._timer or time_layer

    def lookup(self, shape: LayerShape) -> float:
        if shape.in_channels == 0 or shape.out_channels == 0:
            return 0.0  # a layer of an emptied branch (`surgery.empty`): no conv runs
        key = shape.key()
        if key not in self.entries:
            self.entries[key] = float(self.timer()(shape, self.batch_size, self.threads, self.device))
            self.measured += 1
        return self.entries[key]

    def lookup_many(self, shapes: Iterable[LayerShape]) -> list[float]:
        """Lookups that save the file once at the end when anything new was measured."""
        before = self.measured
        out = [self.lookup(s) for s in shapes]
        if self.measured != before:
            self.save()
        return out


# ---------------------------------------------------------------- --round-to auto

#: Widths the auto sweep times: one 3×3 conv, 64 input channels, 8×8 input, output width 8..64.
SWEEP_WIDTHS: tuple[int, ...] = tuple(range(8, 65))
SWEEP_CANDIDATES: tuple[int, ...] = (1, 2, 4, 8, 16)
#: Passes over the widths, interleaved; each width keeps its fastest pass (load only ever adds time).
SWEEP_PASSES = 3
#: Two timings this close (relative) count as equal: a wider width that is no slower is free.
SWEEP_EQUAL = 0.01
#: How much worse than the best candidate's score a smaller candidate may be and still be chosen.
SWEEP_SLACK = 0.02


def choose_round_to(
    latencies: dict[int, float],
    candidates: Sequence[int] = SWEEP_CANDIDATES,
    equal: float = SWEEP_EQUAL,
    slack: float = SWEEP_SLACK,
) -> int:
    """The smallest candidate multiple whose widths leave no channels free.

    Hardware that computes channels in blocks of 8 runs 12 channels as slowly as 16: keeping 12 gives up
    4 channels that cost nothing. For each width w, `free(w)` is the fraction of extra channels some
    wider width offers at no extra time (within `equal`). A candidate r scores the mean of `free` over
    its multiples in the sweep; the smallest r within `slack` of the best score wins (hardware without
    such steps scores alike everywhere: 1)."""
    widths = sorted(latencies)
    if not widths:
        raise ConfigError("round_to auto: empty sweep")
    free = {
        w: (max(v for v in widths if v >= w and latencies[v] <= latencies[w] * (1 + equal)) - w) / w
        for w in widths
    }
    scores = {}
    for r in candidates:
        aligned = [w for w in widths if w % r == 0]
        if aligned:
            scores[r] = statistics.fmean(free[w] for w in aligned)
    if not scores:
        raise ConfigError(f"round_to auto: no candidate in {tuple(candidates)} fits the sweep widths")
    best = min(scores.values())
    return min(r for r, score in scores.items() if score <= best + slack)


def preferred_round_to(
    threads: int = 1,
    device: str = "cpu",
    batch_size: int = 1,
    *,
    timer: Timer | None = None,
    directory: str | Path | None = None,
) -> int:
    """``--round-to auto``: the width multiple this machine favours, from a short sweep of one conv's
    latency against its output width (`choose_round_to`), cached per machine/threads/device/batch."""
    table = LatencyTable(batch_size, threads, device, timer=timer, directory=directory)
    answer = table.path.with_name(table.path.name.replace("latency-", "round_to-"))
    try:
        cached = json.loads(answer.read_text())
        if cached.get("fingerprint") == table.fingerprint:
            return int(cached["round_to"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    base = LayerShape(64, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8))
    shapes = [dataclasses.replace(base, out_channels=w) for w in SWEEP_WIDTHS]
    timer = table.timer()
    latencies = {w: float("inf") for w in SWEEP_WIDTHS}
    for _ in range(SWEEP_PASSES):
        for w, shape in zip(SWEEP_WIDTHS, shapes, strict=True):
            latencies[w] = min(latencies[w], timer(shape, table.batch_size, table.threads, table.device))
    chosen = choose_round_to(latencies)
    _write_json(answer, {"fingerprint": table.fingerprint, "round_to": chosen, "sweep_us": latencies})
    return chosen


def in_model_layer_latencies(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, threads: int = 1, repeats: int = 10
) -> dict[str, tuple[LayerShape, float]]:
    """Each conv/linear layer's table key and its median µs measured inside the BN-folded eager model
    (timestamps from hooks around each call; CPU ops are synchronous, so a layer's time is its own). What
    `prunekit profile --latency-table` sets beside the table's prediction for the same shape."""
    from prunekit.measure.deployment import fold_batchnorm

    folded = fold_batchnorm(model)
    names = {m: n for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    started: dict[str, float] = {}
    samples: dict[str, list[float]] = {n: [] for n in names.values()}
    shapes: dict[str, LayerShape] = {}

    def before(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        name = names[module]
        if name not in shapes:
            hw = tuple(inputs[0].shape[-2:]) if isinstance(module, nn.Conv2d) else (1, 1)
            shapes[name] = layer_shape(module, hw)  # type: ignore[arg-type]
        started[name] = time.perf_counter()

    def after(module: nn.Module, _inputs: object, _output: object) -> None:
        name = names[module]
        samples[name].append((time.perf_counter() - started[name]) * 1e6)

    handles = [m.register_forward_pre_hook(before) for m in names]
    handles += [m.register_forward_hook(after) for m in names]
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    steady_allocator()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            folded(x)  # warm-up, not recorded below
            for s in samples.values():
                s.clear()
            for _ in range(repeats):
                folded(x)
    finally:
        torch.set_num_threads(previous)
        for h in handles:
            h.remove()
    return {name: (shapes[name], statistics.median(s)) for name, s in samples.items() if s}
