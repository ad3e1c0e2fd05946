"""Re-time the models of many runs together, so that their latencies can be compared at all.

Runs time their models when they finish, each in its own process, at its own time, under whatever else
the machine was doing: a ratio of two such figures mixes the models' speed with the load at two moments
(a model with the dense architecture was once reported 1.47× faster than the dense model). `retime` loads
every run's model file and times them all interleaved in this one process (`measure.compare_latency`), and
returns the rows with each latency's median and spread.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure.timing import LatencyResult, compare_latency
from prunekit.report.compare import model_file_of, read_summary
from prunekit.report.tables import ComparisonRow


@dataclasses.dataclass(frozen=True)
class Timing:
    """How a table's latencies were taken; `describe()` is the sentence printed under the table."""

    batch_sizes: tuple[int, ...]
    threads: int
    repeats: int
    rounds: int
    shapes: tuple[tuple[int, ...], ...]

    def describe(self) -> str:
        thread_word = "thread" if self.threads == 1 else "threads"
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        groups = "" if len(self.shapes) == 1 else f" (interleaved within each input shape: {shapes})"
        return (
            f"latency re-timed now, all models interleaved in one process{groups}: deployed (BN-folded, "
            f"frozen) form, {self.threads} {thread_word}, {self.repeats} timed forwards per model in "
            f"{self.rounds} rounds, batch sizes {', '.join(map(str, self.batch_sizes))}"
        )


def model_files_present(paths: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether every run's model file is on this machine (then `report` re-times by default)."""
    return all(model_file_of(p).is_file() for p in paths)


def retime(
    paths: Sequence[str | os.PathLike[str]],
    rows: Sequence[ComparisonRow],
    *,
    batch_sizes: Sequence[int] = (1,),
    threads: int = 1,
    repeats: int = 50,
    rounds: int = 10,
    warmup: int = 10,
) -> tuple[list[ComparisonRow], Timing]:
    """`rows` (one per run in `paths`) with their latencies replaced by a fresh interleaved timing."""
    from prunekit import model_file

    if len(paths) != len(rows):
        raise ConfigError(f"{len(paths)} run folders but {len(rows)} rows")
    if not batch_sizes or min(batch_sizes) < 1 or threads < 1 or repeats < 1 or rounds < 1:
        raise ConfigError(
            f"re-timing needs batch sizes, threads, repeats and rounds >= 1; got batch sizes "
            f"{list(batch_sizes)}, threads {threads}, repeats {repeats}, rounds {rounds}"
        )
    files = [model_file_of(p) for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(
            f"--measure needs every run's model file on this machine; missing: {', '.join(missing)} "
            "(or pass --no-measure to show the latencies the runs recorded)"
        )
    models: list[nn.Module] = []
    shapes: list[tuple[int, ...]] = []
    for path, f in zip(paths, files, strict=True):
        model = model_file.load(f).eval()
        shape = model.prunekit_info.get("input_shape") or read_summary(path).get("input_shape")
        if not shape:
            raise ConfigError(f"{f} records no input shape, so it cannot be timed")
        models.append(model)
        shapes.append(tuple(int(s) for s in shape))
    # Each model under its row index: run folders may share a name.
    latency: list[dict[int, LatencyResult]] = [{} for _ in rows]
    for shape in dict.fromkeys(shapes):
        group = {str(i): m for i, (m, s) in enumerate(zip(models, shapes, strict=True)) if s == shape}
        for b in batch_sizes:
            results = compare_latency(
                group, shape, batch_size=b, threads=threads, repeats=repeats, rounds=rounds, warmup=warmup
            )
            for key, res in results.items():
                latency[int(key)][b] = res
    out = [
        dataclasses.replace(
            row,
            latency_ms={b: r.median_ms for b, r in lat.items()},
            latency_stats={b: r.stats for b, r in lat.items()},
        )
        for row, lat in zip(rows, latency, strict=True)
    ]
    timing = Timing(
        tuple(batch_sizes), threads, max(1, repeats // rounds) * rounds, rounds, tuple(dict.fromkeys(shapes))
    )
    return out, timing
