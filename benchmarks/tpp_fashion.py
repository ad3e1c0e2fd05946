"""TPP vs GReg-1 vs GReg-2 vs L1 on real Fashion-MNIST (specs/tpp.md §8.1's claim, small scale).

ResNet-20 with one input channel is trained once (cached under runs/, git-ignored); each method then prunes
``*layer*.conv1`` at PR 0.9 (TPP's Tab. 1 layout: every block's first conv keeps 1/3/6 of 16/32/64
filters), the regularising methods after their own (shortened) growing-penalty stage, L1 one-shot on the
dense weights, as in the paper. Every pruned model gets the same short fine-tune at lr 0.01 and at lr 0.001;
top-1 right after removal, and best / last top-1 of the fine-tune are printed side by side, with ratios.

The paper's claim: TPP keeps trainability, so at high PR it is clearly ahead of L1, most of all at the small
fine-tuning lr (Tab. 1, PR 0.9: TPP 89.09 vs L1 87.57 at lr 1e-3 on ResNet-56/CIFAR-10).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tpp_fashion.py            # CPU, ~10-15 min on one core
    .venv/bin/python benchmarks/tpp_fashion.py --device cuda --train 60000 --dense-epochs 15 \
        --ft-epochs 10 --scale 4                                            # the larger run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import warnings
from pathlib import Path

import torch

from prunekit import model_file
from prunekit.data import build_loaders
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.pipeline import calibration_batch
from prunekit.surgery import apply
from prunekit.train import TrainConfig, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
SELECTION = "*layer*.conv1:0.9"


def schedules(scale: int) -> dict[str, dict[str, object]]:
    """The paper's schedules shortened: λ still grows 0 → 1 by equal steps and is held, with the same
    optimiser (SGD lr 1e-3, momentum 0.9). `scale` multiplies every interval (1: ~230 steps)."""
    ramp = {"update_reg_interval": 2 * scale, "reg_granularity": 0.0125}
    return {
        "tpp": {**ramp, "stabilize_reg_interval": 60 * scale, "zero_out_interval": 3 * scale},
        "greg1": {**ramp, "stabilize_reg_interval": 60 * scale},
        "greg2": {**ramp, "stabilize_reg_interval": 60 * scale, "reg_granularity_pick": 2e-3},
        "l1": {},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", type=int, default=10000, help="training images used (first n)")
    p.add_argument("--test", type=int, default=5000, help="test images used (first n)")
    p.add_argument("--dense-epochs", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--scale", type=int, default=1, help="multiplies the sparsify schedule's intervals")
    p.add_argument("--methods", default="tpp,greg1,greg2,l1")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order (dense: cached)")
    p.add_argument("--cache", default=str(ROOT / "runs" / "tpp_fashion"))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(1) if args.device == "cpu" else None
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    train, test, _ = build_loaders(
        "fashion_mnist", 128, device=device, root=args.data_root, download=False,
        limit_train=args.train, limit_test=args.test, eval_batch_size=1000, seed=args.seed,
    )  # fmt: skip
    cache = Path(args.cache) / f"dense_{args.train}_{args.dense_epochs}.safetensors"
    started = time.perf_counter()
    if cache.is_file():
        dense = model_file.load(cache)
    else:
        dense = create("resnet20", num_classes=10, in_channels=1)
        cfg = TrainConfig(epochs=args.dense_epochs, lr=0.1, weight_decay=5e-4, schedule="cosine", seed=0)
        fit(dense, train, test, cfg, device=device, progress=False)
        cache.parent.mkdir(parents=True, exist_ok=True)
        model_file.save(dense.to("cpu").eval(), cache)
    dense_top1 = evaluate(dense, test, device=device)["top1"]
    print(f"dense ResNet-20 (1 channel): top-1 {dense_top1:.2f} % on {args.test} test images "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    calib = calibration_batch(train, 128).to("cpu")
    results: dict[str, dict[str, float]] = {}
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        model = copy.deepcopy(dense).to("cpu").eval()
        method = create_method(name, SELECTION, **schedules(args.scale)[name])
        row: dict[str, float] = {}
        if name == "l1":
            small = apply(model, method.plan(model, calib), calib[:1])
        else:
            method.prepare(model, calib)
            steps = method.sparsify_steps(len(train))
            cfg = TrainConfig(
                epochs=math.ceil(steps / len(train)), lr=1e-3, momentum=0.9, weight_decay=5e-4,
                schedule="constant", seed=args.seed,
            )  # fmt: skip
            sparsified = fit(model, train, test, cfg, hooks=[method], device=device, progress=False)
            row["top1_end_of_sparsify"] = sparsified.final_top1 or 0.0
            pruned = method.prune(model.to("cpu").eval(), calib)
            small = pruned.model
            # Largest removed/kept mean|w| over the layers right before removal (0 once zeroed).
            row["max_removed_over_kept"] = max(
                m["removed"] / m["kept"] for m in pruned.details["mean_abs_w"].values()
            )
            row["steps"] = steps
        row["top1_after_removal"] = evaluate(small, test, device=device)["top1"]
        for lr in (0.01, 0.001):
            tuned = copy.deepcopy(small)
            cfg = TrainConfig(
                epochs=args.ft_epochs, lr=lr, momentum=0.9, weight_decay=5e-4, schedule="piecewise",
                piecewise=f"0:{lr},{args.ft_epochs - 1}:{lr / 10}" if args.ft_epochs > 1 else f"0:{lr}",
                seed=args.seed,
            )  # fmt: skip
            result = fit(tuned, train, test, cfg, device=device, progress=False)
            row[f"best_lr{lr:g}"] = result.best_top1 or 0.0
            row[f"last_lr{lr:g}"] = result.final_top1 or 0.0
        row["seconds"] = time.perf_counter() - t0
        results[name] = row
        print(name, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        if args.json:  # after every method, so a run stopped early keeps what it measured
            Path(args.json).write_text(json.dumps({"dense_top1": dense_top1, "results": results}, indent=1))

    print(f"\nResNet-20 / Fashion-MNIST, {SELECTION}, dense {dense_top1:.2f} %; train {args.train}, "
          f"test {args.test}, fine-tune {args.ft_epochs} epochs; sparsify scale {args.scale}")  # fmt: skip
    print("| method | after removal | best lr 0.01 | last lr 0.01 | best lr 0.001 | last lr 0.001 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['top1_after_removal']:.2f} | {r['best_lr0.01']:.2f} | {r['last_lr0.01']:.2f} | "
              f"{r['best_lr0.001']:.2f} | {r['last_lr0.001']:.2f} |")  # fmt: skip
    if "l1" in results:
        base = results["l1"]
        for name, r in results.items():
            if name != "l1":
                gain = r["top1_after_removal"] - base["top1_after_removal"]
                print(f"{name} − l1: after removal {gain:+.2f}, "
                      f"best lr 0.01 {r['best_lr0.01'] - base['best_lr0.01']:+.2f}, "
                      f"best lr 0.001 {r['best_lr0.001'] - base['best_lr0.001']:+.2f} points")  # fmt: skip


if __name__ == "__main__":
    main()
