"""Run plots: training curves, accuracy vs MACs and vs latency, per-layer widths (PNG, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers/CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from prunekit.measure.timing import LatencyStats  # noqa: E402


@dataclass(frozen=True)
class CostPoint:
    """One model on the accuracy-vs-cost plots."""

    label: str
    macs: float
    top1: float
    latency_ms: float | None = None  # median
    latency_iqr: tuple[float, float] | None = None  # (p25, p75); None when no spread was recorded

    @classmethod
    def of(
        cls, label: str, macs: float, top1: float, ms: float | None, stats: LatencyStats | None
    ) -> CostPoint:
        if stats is not None:
            return cls(label, macs, top1, stats.median_ms, (stats.p25_ms, stats.p75_ms))
        return cls(label, macs, top1, ms)


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "",
    start_top1: float | None = None,
) -> Path:
    """Loss and top-1 per epoch, train and validation. `start_top1`: the validation top-1 before the
    first epoch (e.g. right after pruning), drawn at epoch 0 so the recovery is visible."""
    return save_figure(curves_figure(history, title, start_top1), Path(path))


def curves_figure(history: Sequence[dict[str, Any]], title: str = "", start_top1: float | None = None) -> Any:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if any(key in h for h in history):
            ax_loss.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "val")):
        if any(key in h for h in history):
            ax_acc.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    if start_top1 is not None:
        first_val = next((h for h in history if "val_top1" in h), None)
        if first_val is not None:  # join the start point to the validation curve
            ax_acc.plot([0, first_val["epoch"]], [start_top1, first_val["val_top1"]], ls=":", color="C1")
        ax_acc.plot([0], [start_top1], marker="*", ms=11, ls="", color="C3", label="before fine-tuning")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 %", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def spread_labels(fig: Any, texts: Sequence[Any], pad_px: float = 2.0, max_moves: int = 50) -> None:
    """Move annotation labels (offset-points annotations) down, one line at a time, until no two overlap.
    Greedy in drawing order: the first label stays, each later one steps past those already placed."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for text in texts:
        for _ in range(max_moves):
            box = text.get_window_extent(renderer)
            clash = next((p for p in placed if box.overlaps(p)), None)
            if clash is None:
                break
            step_pt = (box.y1 - clash.y0 + pad_px) * 72.0 / fig.dpi
            x, y = text.xyann
            text.xyann = (x, y - step_pt)
        placed.append(text.get_window_extent(renderer))


def _scatter_labelled(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> list[Any]:
    texts = []
    for x, y, label in zip(xs, ys, labels, strict=True):
        ax.scatter(x, y, s=40)
        texts.append(ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8))
    return texts


def plot_accuracy_vs_macs(
    points: Sequence[tuple[str, float, float]], path: str | Path, title: str = ""
) -> Path:
    """`points` = (label, MACs, top-1 %)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    texts = _scatter_labelled(
        ax, [p[1] / 1e6 for p in points], [p[2] for p in points], [p[0] for p in points]
    )
    ax.set(xlabel="MACs (M, conv+linear)", ylabel="top-1 %", title=title or "accuracy vs MACs")
    ax.grid(alpha=0.3)
    spread_labels(fig, texts)
    return save_figure(fig, Path(path))


def plot_accuracy_vs_cost(
    points: Sequence[CostPoint], path: str | Path, *, batch_size: int = 1, timing: str = "", title: str = ""
) -> Path:
    """Accuracy vs MACs and, beside it, accuracy vs measured latency at `batch_size` (median, with the
    interquartile range as a horizontal bar where it was measured). `timing` says how the latencies were
    taken, under the plot."""
    return save_figure(
        accuracy_cost_figure(points, batch_size=batch_size, timing=timing, title=title), Path(path)
    )


def accuracy_cost_figure(
    points: Sequence[CostPoint], *, batch_size: int = 1, timing: str = "", title: str = ""
) -> Any:
    timed = [p for p in points if p.latency_ms is not None]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 6, 4.2), squeeze=False)
    ax_macs = axes[0][0]
    texts = _scatter_labelled(
        ax_macs, [p.macs / 1e6 for p in points], [p.top1 for p in points], [p.label for p in points]
    )
    ax_macs.set(xlabel="MACs (M, conv+linear)", ylabel="top-1 %", title="accuracy vs MACs")
    ax_macs.grid(alpha=0.3)
    if timed:
        ax_lat = axes[0][1]
        for i, p in enumerate(timed):
            ms = p.latency_ms
            assert ms is not None
            err = None if p.latency_iqr is None else [[ms - p.latency_iqr[0]], [p.latency_iqr[1] - ms]]
            ax_lat.errorbar(ms, p.top1, xerr=err, fmt="o", color=f"C{i % 10}", capsize=3)
            texts.append(
                ax_lat.annotate(p.label, (ms, p.top1), textcoords="offset points", xytext=(5, 4), fontsize=8)
            )
        ax_lat.set(
            xlabel=f"latency at batch {batch_size} (ms, median; bar = p25–p75)",
            ylabel="top-1 %",
            title="accuracy vs latency",
        )
        ax_lat.grid(alpha=0.3)
        if timing:
            fig.text(0.5, -0.02, timing, ha="center", va="top", fontsize=7, wrap=True)
    if title:
        fig.suptitle(title)
    spread_labels(fig, texts)
    return fig


def plot_widths(
    before: dict[str, int],
    after: dict[str, int],
    path: str | Path,
    title: str = "",
    ranks: dict[str, int] | None = None,
) -> Path:
    """Output channels per prunable layer before and after pruning, one horizontal bar per layer with its
    name on the axis (readable for a hundred layers), first layer at the top. `ranks`: the rank of each
    factorised conv, drawn as a marker on its bar (its output channels are unchanged)."""
    return save_figure(widths_figure(before, after, title, ranks), Path(path))


def widths_figure(
    before: dict[str, int], after: dict[str, int], title: str = "", ranks: dict[str, int] | None = None
) -> Any:
    names = list(before)
    fontsize = 8 if len(names) <= 40 else 6
    # One text line (1.6 × the font size, in points) per layer, so tick labels never overlap.
    height = max(2.5, len(names) * fontsize * 1.6 / 72 + 1.0)
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = range(len(names))
    ax.barh(y, [before[n] for n in names], color="#c8d6e5", label="before", height=0.8)
    ax.barh(y, [after.get(n, 0) for n in names], color="#2e86de", label="after", height=0.8)
    ranked = [(i, ranks[n]) for i, n in enumerate(names) if ranks and n in ranks]
    if ranked:
        ax.scatter([r for _, r in ranked], [i for i, _ in ranked], marker="D", s=18, color="#e15f41",
                   zorder=3, label="rank (factorised)")  # fmt: skip
    ax.set_yticks(list(y), names, fontsize=fontsize)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first layer on top, the order of the network
    ax.set_xlabel("output channels / rank" if ranked else "output channels")
    ax.set_title(title or "per-layer widths")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    return fig
