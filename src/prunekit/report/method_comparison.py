"""The report of `prunekit compare`: one table (markdown and CSV) and three plots.

One row per (budget, method): params, MACs, compression, theoretical speed-up, measured latency speed-up
per batch size (paired with the dense model, timed interleaved; inside the noise is said so), accuracy
best and last as mean ± std over seeds, Δ vs the dense model, the fine-tuning budget in epochs and wall
time. Plots are readable without the table: accuracy vs MACs and vs measured latency (error bars = std
over seeds, the dense model marked), and the per-layer widths of every method side by side.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from prunekit.measure.timing import LatencyStats, speedup
from prunekit.report.plots import save_figure  # also selects the headless backend
from prunekit.report.run_folder import RunFolder

MeanStd = tuple[float, float]


@dataclass(frozen=True)
class MethodRow:
    """One method at one budget, over its seeds."""

    budget: float
    method: str
    label: str
    seeds: tuple[int, ...]
    params: int
    macs: float
    macs_reached: float | None
    top1_last: MeanStd
    top1_best: MeanStd
    top1_before: MeanStd
    wall_time_s: float
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)


COLUMNS = [
    "budget",
    "method",
    "options",
    "params",
    "MACs",
    "compression",
    "MAC speed-up",
    "latency speed-up",
    "top-1 best",
    "top-1 last",
    "Δ top-1 (last)",
    "top-1 before FT",
    "FT epochs",
    "wall time (s)",
    "seeds",
]


def _pm(value: MeanStd, seeds: int) -> str:
    return f"{value[0]:.2f}" if seeds < 2 else f"{value[0]:.2f} ± {value[1]:.2f}"


def _latency_cell(dense: dict[int, LatencyStats], row: dict[int, LatencyStats]) -> str:
    parts = []
    for b in sorted(set(dense) & set(row)):
        parts.append(f"b{b} {speedup(dense[b], row[b], paired=True)}")
    return "; ".join(parts) or "not timed"


def table_rows(rows: Sequence[MethodRow], dense: dict[str, Any], finetune_epochs: int) -> list[list[str]]:
    dense_latency = {int(b): LatencyStats.of_record(r) for b, r in dense.get("latency", {}).items()}
    dense_top1 = dense.get("top1")
    table = [
        [
            "—",
            "dense",
            "",
            f"{dense['params']:,}",
            f"{dense['macs']:,}",
            "1.00×",
            "1.00×",
            "1.00×",
            "" if dense_top1 is None else f"{dense_top1:.2f}",
            "" if dense_top1 is None else f"{dense_top1:.2f}",
            "",
            "",
            "",
            "",
            "",
        ]
    ]
    for r in rows:
        delta = "" if dense_top1 is None else f"{r.top1_last[0] - dense_top1:+.2f}"
        table.append(
            [
                f"{r.budget:g}" + ("" if r.macs_reached is None else f" (reached {r.macs_reached:.3f})"),
                r.method,
                r.label,
                f"{r.params:,}",
                f"{round(r.macs):,}",
                f"{dense['params'] / max(1, r.params):.2f}×",
                f"{dense['macs'] / max(1.0, r.macs):.2f}×",
                _latency_cell(dense_latency, r.latency),
                _pm(r.top1_best, len(r.seeds)),
                _pm(r.top1_last, len(r.seeds)),
                delta,
                _pm(r.top1_before, len(r.seeds)),
                str(finetune_epochs),
                "" if math.isnan(r.wall_time_s) else f"{r.wall_time_s:.0f}",
                ",".join(map(str, r.seeds)),
            ]
        )
    return table


def markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def csv_text(table: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(table)
    return buffer.getvalue()


def write_comparison(
    out: Path,
    rows: Sequence[MethodRow],
    dense: dict[str, Any],
    failed: dict[str, str],
    finetune_epochs: int,
    seeds: Sequence[int],
) -> None:
    """compare.md, compare.csv, summary.json and the plots in `out` (each written whole, then moved)."""
    table = table_rows(rows, dense, finetune_epochs)
    plots = [
        _plot_accuracy(rows, dense, "macs", out / "accuracy_vs_macs.png"),
        _plot_accuracy(rows, dense, "latency", out / "accuracy_vs_latency.png"),
        _plot_widths(rows, dense.get("widths", {}), out / "widths.png"),
    ]
    notes = [
        f"Every method from the same dense model, at the same MAC budget (its knob searched to land within "
        f"2 %), fine-tuned {finetune_epochs} epochs with the same recipe; seeds {', '.join(map(str, seeds))} "
        "(accuracy as mean ± std over seeds).",
        "Latency: the dense model and each method's first-seed model timed interleaved in one process "
        "(deployed form: BN folded, frozen); speed-ups are paired, and one inside the noise is marked so.",
    ]
    text = "# prunekit compare\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + markdown(table)
    if failed:
        text += "\n## Rows that failed\n\n" + "".join(f"- `{k}`: {v}\n" for k, v in failed.items())
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in plots if p is not None)
    run = RunFolder(out)
    run.write_text("compare.md", text)
    run.write_text("compare.csv", csv_text(table))
    summary = {
        "status": "complete",
        "kind": "compare",
        "dense": dense,
        "finetune_epochs": finetune_epochs,
        "seeds": list(seeds),
        "rows": [
            {
                "budget": r.budget,
                "method": r.method,
                "options": r.label,
                "seeds": list(r.seeds),
                "params": r.params,
                "macs": r.macs,
                "macs_reached": r.macs_reached,
                "top1_best": list(r.top1_best),
                "top1_last": list(r.top1_last),
                "top1_before_finetune": list(r.top1_before),
                "wall_time_s": None if math.isnan(r.wall_time_s) else r.wall_time_s,
                "latency": {str(b): s.to_record() for b, s in r.latency.items()},
            }
            for r in rows
        ],
        "failed": failed,
    }
    run.write_summary(summary)


def _plot_accuracy(rows: Sequence[MethodRow], dense: dict[str, Any], axis: str, path: Path) -> Path | None:
    """Accuracy (last, mean ± std over seeds) against MACs or measured latency at the largest timed batch;
    one series per method across budgets, the dense model as a star."""
    batch = max((b for r in rows for b in r.latency), default=None)
    if axis == "latency" and batch is None:
        return None

    def x_of(r: MethodRow) -> float:
        return r.macs / 1e6 if axis == "macs" else r.latency[batch].median_ms

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method in dict.fromkeys(r.method for r in rows):
        series = sorted((r for r in rows if r.method == method and (axis == "macs" or batch in r.latency)),
                        key=x_of)  # fmt: skip
        if series:
            ys = [r.top1_last[0] for r in series]
            errors = [r.top1_last[1] for r in series]
            ax.errorbar([x_of(r) for r in series], ys, yerr=errors, marker="o", capsize=3, label=method)
    dense_latency = dense.get("latency", {})
    dense_x = (
        dense["macs"] / 1e6
        if axis == "macs"
        else (LatencyStats.of_record(dense_latency[batch]).median_ms if batch in dense_latency else None)
    )
    if dense.get("top1") is not None and dense_x is not None:
        ax.scatter([dense_x], [dense["top1"]], marker="*", s=160, color="black", zorder=5, label="dense")
        ax.axhline(dense["top1"], color="black", linewidth=0.8, linestyle="--", alpha=0.5)
    ax.set_xlabel("MACs per image (M)" if axis == "macs" else f"measured latency, batch {batch} (ms, median)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title("accuracy vs " + ("MACs" if axis == "macs" else "measured latency"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _plot_widths(rows: Sequence[MethodRow], dense_widths: dict[str, int], path: Path) -> Path | None:
    """Kept output channels per layer, one bar group per layer (names on the axis), a bar per method at
    the first budget; the dense widths as a step line."""
    if not rows:
        return None
    first = [r for r in rows if r.budget == rows[0].budget and r.widths]
    layers = list(dense_widths or first[0].widths) if first else []
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(layers) * max(1, len(first)) ** 0.5), 4.8))
    width = 0.8 / max(1, len(first))
    for k, r in enumerate(first):
        xs = [i + (k - (len(first) - 1) / 2) * width for i in range(len(layers))]
        ax.bar(xs, [r.widths.get(name, 0) for name in layers], width=width, label=r.method)
    if dense_widths:
        ax.step(range(len(layers)), [dense_widths[n] for n in layers], where="mid", color="black",
                linewidth=1, label="dense")  # fmt: skip
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=90, fontsize=7)
    ax.set_ylabel("output channels kept")
    ax.set_title(f"per-layer widths at {rows[0].budget:g}× the dense MACs")
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)
