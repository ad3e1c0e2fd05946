"""Plots for run folders: training curves, accuracy vs MACs, per-layer widths (PNG, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers/CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and top-1 per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if any(key in h for h in history):
            ax_loss.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "val")):
        if any(key in h for h in history):
            ax_acc.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 %", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def plot_accuracy_vs_macs(
    points: Sequence[tuple[str, float, float]], path: str | Path, title: str = ""
) -> Path:
    """`points` = (label, MACs, top-1 %)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, macs, top1 in points:
        ax.scatter(macs / 1e6, top1, s=40)
        ax.annotate(label, (macs / 1e6, top1), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="MACs (M, conv+linear)", ylabel="top-1 %", title=title or "accuracy vs MACs")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_widths(before: dict[str, int], after: dict[str, int], path: str | Path, title: str = "") -> Path:
    """Output channels per prunable layer before and after pruning."""
    names = list(before)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 3.8))
    ax.bar(x, [before[n] for n in names], color="#c8d6e5", label="before")
    ax.bar(x, [after.get(n, 0) for n in names], color="#2e86de", label="after")
    ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax.set(ylabel="output channels", title=title or "per-layer widths")
    ax.legend()
    return _save(fig, Path(path))
