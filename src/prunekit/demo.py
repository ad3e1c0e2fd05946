"""`prunekit demo`: the main job on the embedded Fashion-MNIST subset, offline, in a few minutes on a CPU.

Trains LeNet-5 on the packaged real images, prunes it with every method that declares a demo schedule
(`Method.demo`): the one-shot criteria at the same ratio, the regularisers with their own short sparsify
stage (then the filters and neurons that fell to zero are removed), fine-tunes briefly, and prints /
writes one table (accuracy, params, MACs, deployed latency at batch 1 and 64, all models timed
interleaved) plus plots.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from prunekit import model_file
from prunekit.methods import Schedule, list_methods, method_class
from prunekit.pipeline import DataSpec, PruneSpec, compare_models, prune_run, train_run
from prunekit.report import RunFolder, comparison_markdown, comparison_table, plot_accuracy_vs_macs
from prunekit.report.tables import ComparisonRow
from prunekit.train import TrainConfig

DEMO_DATA = "fashion_mnist_mini"
DEMO_ARCH = "lenet5"
DEMO_RATIO = 0.5


def demo_methods() -> list[tuple[str, str, Schedule]]:
    """(label, method, schedule) of every registered method that declares a demo schedule: one-shot
    criteria at DEMO_RATIO per layer, regularisers with their own short sparsify stage."""
    runs = []
    for name in list_methods():
        schedule = method_class(name).demo
        if schedule is not None:
            suffix = schedule.label or (f"{DEMO_RATIO:.0%}" if schedule.sparsify_epochs == 0 else "")
            runs.append((f"{name} {suffix}".strip(), name, schedule))
    return runs


def run_demo(out: Path, epochs: int = 8, finetune_epochs: int = 3, seed: int = 0) -> list[ComparisonRow]:
    # Logs and CI capture stdout: give the comparison table room instead of the 80 columns of a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.rule("prunekit demo: LeNet-5 on the embedded Fashion-MNIST subset")
    data = DataSpec(DEMO_DATA, batch_size=64, seed=seed)
    cfg = TrainConfig.from_dict(
        {
            "epochs": epochs,
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "seed": seed,
            "batch_size": 64,
        }
    )
    dense = train_run(
        DEMO_ARCH,
        data,
        cfg,
        out / "dense",
        latency_batches=(),
        config_record={"command": "demo", "arch": DEMO_ARCH, "data": vars(data), "train": cfg.to_dict()},
    )
    finetune = TrainConfig.from_dict({**cfg.to_dict(), "epochs": finetune_epochs, "lr": 0.01})
    pruned: dict[str, dict] = {}
    runs = demo_methods()
    for label, method, schedule in runs:
        console.rule(f"{label}: prune, fine-tune {finetune_epochs} epochs")
        one_shot = schedule.sparsify_epochs == 0
        sparsify = None
        if not one_shot:
            sparsify = TrainConfig.from_dict(
                {"epochs": schedule.sparsify_epochs, "seed": seed, **schedule.sparsify}
            )
        pruned[label] = prune_run(
            out / "dense" / "model.safetensors",
            PruneSpec(
                method, options=schedule.options, ratio=DEMO_RATIO if one_shot else None, calib_images=256
            ),
            data,
            out / method,
            sparsify=sparsify,
            finetune=finetune,
            latency_batches=(),
        )

    console.rule("timing all models interleaved (deployed: BN folded + frozen, 1 thread)")
    models = {"dense": model_file.load(out / "dense" / "model.safetensors")}
    models.update({label: model_file.load(out / m / "model.safetensors") for label, m, _ in runs})
    measured = compare_models(models, tuple(dense["input_shape"]), (1, 64))
    rows = [
        ComparisonRow(
            "LeNet-5 dense",
            dense["top1"],
            measured["dense"]["params"],
            measured["dense"]["macs"],
            measured["dense"]["latency_ms"],
        )
    ]
    for m, summary in pruned.items():
        rows.append(
            ComparisonRow(
                m,
                summary["pruned"]["top1"],
                measured[m]["params"],
                measured[m]["macs"],
                measured[m]["latency_ms"],
                note=f"{summary['pruned']['top1_before_finetune']:.1f} % before FT",
            )
        )

    run = RunFolder(out)
    console.print(comparison_table(rows, title="prunekit demo: Fashion-MNIST subset, CPU"))
    plot_accuracy_vs_macs(
        [(r.name, r.macs, r.top1 or 0.0) for r in rows],
        run.file("accuracy_vs_macs.png"),
        title="LeNet-5 on Fashion-MNIST (subset): accuracy vs MACs",
    )
    run.write_text(
        "report.md",
        "# prunekit demo\n\n"
        f"LeNet-5 trained {epochs} epochs on the embedded Fashion-MNIST subset (6,000 train / 1,000 test "
        f"images), then pruned by each one-shot criterion at {DEMO_RATIO:.0%} per layer and by each "
        "regulariser after its own short sparsify stage (then the filters and neurons that fell to zero are "
        f"removed), each fine-tuned {finetune_epochs} epochs. Latency: deployed form, 1 thread, all models "
        "timed interleaved.\n\n"
        + comparison_markdown(rows)
        + "\n![accuracy vs MACs](accuracy_vs_macs.png)\n\n![dense training](dense/curves.png)\n",
    )
    run.write_summary({"kind": "demo", "rows": [vars(r) for r in rows]})
    console.print(f"wrote {run.path}/report.md, summary.json and plots (per-run folders inside)")
    return rows
