"""What a run shows while it trains: a live rich bar on a terminal, one plain line per epoch in CI logs."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch, e.g. `epoch 3/10  train loss 0.4120 top-1 86.20%  val ...  lr 0.05  1234 img/s`."""
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.2f}%",
    ]
    if "val_top1" in record:
        parts.append(
            f"val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2f}% "
            f"top-5 {record['val_top5']:.2f}%"
        )
    parts.append(f"lr {record['lr']:.4g}")
    parts.append(f"{record['images_per_s']:.0f} img/s")
    parts.append(f"{record['epoch_time_s']:.1f}s")
    return "  ".join(parts)


class EpochReporter:
    """Plain text: prints each finished epoch; takes no per-step updates (so the loop never syncs for it)."""

    live = False

    def __init__(self, epochs: int, console: Console | None = None) -> None:
        self.epochs = epochs
        self.console = console

    def start_epoch(self, epoch: int, steps: int) -> None:
        pass

    def update(self, done: int, *, loss: float, top1: float, lr: float, images_per_s: float) -> None:
        pass

    def end_epoch(self, record: dict[str, Any]) -> None:
        line = format_epoch(record, self.epochs)
        if self.console is not None:
            self.console.print(line, highlight=False)
        else:
            print(line, flush=True)

    def close(self) -> None:
        pass


class BarReporter(EpochReporter):
    """A rich bar per epoch: running loss, accuracy, lr, images/s and ETA; finished epochs stay printed."""

    live = True

    def __init__(self, epochs: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  top-1 {task.fields[top1]:.2f}%  lr {task.fields[lr]:.4g}  "
                "{task.fields[ips]:.0f} img/s"
            ),
            TimeRemainingColumn(),
            transient=True,
        )
        super().__init__(epochs, self.bar.console)
        self.task = self.bar.add_task("", total=1, loss=0.0, top1=0.0, lr=0.0, ips=0.0, visible=False)
        self.bar.start()

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.bar.reset(self.task, total=steps, description=f"epoch {epoch}/{self.epochs}", visible=True)

    def update(self, done: int, *, loss: float, top1: float, lr: float, images_per_s: float) -> None:
        self.bar.update(self.task, completed=done, loss=loss, top1=top1, lr=lr, ips=images_per_s)

    def close(self) -> None:
        self.bar.stop()


def make_reporter(progress: bool | None, epochs: int, *, enabled: bool = True) -> EpochReporter | None:
    """`progress=None`/True: a bar on a TTY, plain lines otherwise; False (or `enabled=False`, i.e. not the
    main rank): nothing."""
    if progress is False or not enabled:
        return None
    return BarReporter(epochs) if sys.stdout.isatty() else EpochReporter(epochs)
