"""`prunekit demo`: the short version of `prunekit compare` on the embedded Fashion-MNIST subset, offline,
in a few minutes on a CPU.

Trains LeNet-5 once on the packaged real images, then prunes it with every method that declares a demo
schedule (`Method.demo`) to the same MAC budget (each method's knob searched to land within 2 %): the
one-shot criteria directly, the regularisers after their own short sparsify stage. Every method gets the
same short fine-tune; all models are timed interleaved. Writes compare.md / compare.csv, the plots and
summary.json, and prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prunekit.compare import CompareResult, CompareSpec, parse_methods, run_compare
from prunekit.pipeline import DataSpec
from prunekit.report.method_comparison import COLUMNS, table_rows
from prunekit.train import TrainConfig

DEMO_DATA = "fashion_mnist_mini"
DEMO_ARCH = "lenet5"
DEMO_BUDGET = 0.5  # fraction of the dense model's MACs


def demo_methods() -> tuple[str, ...]:
    """Every registered method whose demo schedule meets a MAC budget."""
    return parse_methods("all", demo_schedules=True)


def run_demo(
    out: Path,
    epochs: int = 8,
    finetune_epochs: int = 3,
    seed: int = 0,
    *,
    overwrite: bool = False,
    threads: int | None = None,
) -> CompareResult:
    # Logs and CI capture stdout: give the comparison table room instead of the 80 columns of a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.rule("prunekit demo: LeNet-5 on the embedded Fashion-MNIST subset")
    base = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "seed": seed}
    train = TrainConfig.from_dict({**base, "epochs": epochs, "lr": 0.05, "batch_size": 64})
    finetune = TrainConfig.from_dict({**base, "epochs": finetune_epochs, "lr": 0.01, "batch_size": 64})
    spec = CompareSpec(
        demo_methods(),
        (DEMO_BUDGET,),
        finetune,
        seeds=(seed,),
        calib_images=256,
        latency_batches=(1, 64),
        demo_schedules=True,
    )
    result = run_compare(
        DEMO_ARCH,
        DataSpec(DEMO_DATA, batch_size=64, seed=seed),
        spec,
        out,
        train=train,
        threads=threads,
        overwrite=overwrite,
        say=console.rule,
    )
    title = f"prunekit demo: every method at {DEMO_BUDGET:g}× the dense MACs (Fashion-MNIST, CPU)"
    table = Table(title=title)
    shown = ("method", "params", "MACs", "MAC speed-up", "latency speed-up", "top-1 last", "top-1 before FT")
    for column in shown:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in table_rows(result.rows, result.dense, finetune_epochs):
        cells = dict(zip(COLUMNS, row, strict=True))
        table.add_row(*(cells[c] for c in shown))
    console.print(table)
    for row, error in result.failed.items():
        console.print(f"[red]{row} failed[/red]: {error}")
    console.print(f"wrote {Path(out)}/compare.md, compare.csv, summary.json and plots (a run folder per row)")
    return result
