"""`prunekit report RUN...`: many run folders → one comparison table and accuracy-vs-cost plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError
from prunekit.measure.timing import LatencyStats, speedup
from prunekit.report.run_folder import RunFolder
from prunekit.report.tables import ComparisonRow


def row_of(path: str | os.PathLike[str]) -> ComparisonRow:
    """The comparison row of one run folder, whatever kind of run wrote it."""
    summary = read_summary(path)
    name = Path(path).name
    kind = summary.get("kind")
    if kind in ("train", "finetune"):
        return ComparisonRow(
            name, summary["top1"], summary["params"], summary["macs"], _latency(summary), "", _stats(summary)
        )
    if kind == "prune":
        pruned = summary["pruned"]
        note = f"{summary['method']}, {pruned['top1_before_finetune']:.2f} % before fine-tuning"
        note += _own_dense_speedup(summary.get("dense") or {}, pruned)
        return ComparisonRow(
            name, pruned["top1"], pruned["params"], pruned["macs"], _latency(pruned), note, _stats(pruned)
        )
    if kind == "recipe":
        ours = summary["ours"]
        note = f"recipe {summary['recipe']}" + (" (shortened)" if summary.get("shortened") else "")
        return ComparisonRow(name, ours["top1"], ours["params"], ours["macs"], {}, note)
    raise ConfigError(
        f"{path}: summary.json of kind {kind!r} cannot be compared (train, prune, finetune, recipe)"
    )


def rows_of(paths: list[str | os.PathLike[str]]) -> list[ComparisonRow]:
    if not paths:
        raise ConfigError("give at least one run folder")
    return [row_of(p) for p in paths]


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    # Reading must never create the folder a user mistyped.
    if not Path(path).is_dir():
        raise ConfigError(f"run folder {path} does not exist")
    return RunFolder(Path(path), exist_ok=True).read_summary()


def model_file_of(path: str | os.PathLike[str]) -> Path:
    """The model a run folder produced: `model.safetensors`, or a recipe's `pruned/model.safetensors`."""
    path = Path(path)
    for candidate in (path / "model.safetensors", path / "pruned" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    return path / "model.safetensors"


def _latency(section: dict[str, Any]) -> dict[int, float]:
    # JSON object keys are strings; batch sizes are ints again here.
    return {int(b): float(ms) for b, ms in (section.get("latency_ms") or {}).items()}


def _stats(section: dict[str, Any]) -> dict[int, LatencyStats]:
    return {int(b): LatencyStats.of_record(r) for b, r in (section.get("latency_stats") or {}).items()}


def _own_dense_speedup(dense: dict[str, Any], pruned: dict[str, Any]) -> str:
    """A prune run timed its dense and pruned models interleaved in one process: that ratio is sound even
    when the table's latencies come from separate runs."""
    dense_stats, pruned_stats = _stats(dense), _stats(pruned)
    parts = []
    for b in sorted(set(dense_stats) & set(pruned_stats)):
        parts.append(f"b{b} {speedup(dense_stats[b], pruned_stats[b], paired=True)}")
    if not parts:
        dense_ms, pruned_ms = _latency(dense), _latency(pruned)
        both = sorted(b for b in set(dense_ms) & set(pruned_ms) if pruned_ms[b] > 0)
        parts = [f"b{b} {dense_ms[b] / pruned_ms[b]:.2f}×" for b in both]
    return f"; vs its own dense, timed together: {', '.join(parts)}" if parts else ""
