"""`prunekit report RUN...`: many run folders → one comparison table and an accuracy-vs-MACs plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError
from prunekit.report.run_folder import RunFolder
from prunekit.report.tables import ComparisonRow


def row_of(path: str | os.PathLike[str]) -> ComparisonRow:
    """The comparison row of one run folder, whatever kind of run wrote it."""
    summary = RunFolder(Path(path), exist_ok=True).read_summary()
    name = Path(path).name
    kind = summary.get("kind")
    if kind in ("train", "finetune"):
        return ComparisonRow(name, summary["top1"], summary["params"], summary["macs"], _latency(summary))
    if kind == "prune":
        pruned = summary["pruned"]
        note = f"{summary['method']}, {pruned['top1_before_finetune']:.2f} % before fine-tuning"
        return ComparisonRow(name, pruned["top1"], pruned["params"], pruned["macs"], _latency(pruned), note)
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


def _latency(section: dict[str, Any]) -> dict[int, float]:
    # JSON object keys are strings; batch sizes are ints again here.
    return {int(b): float(ms) for b, ms in (section.get("latency_ms") or {}).items()}
