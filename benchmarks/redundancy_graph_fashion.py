"""Redundancy graph vs L1 and HRank on real Fashion-MNIST, ResNet-20 (one input channel), CPU.

One dense model (trained once, cached under `--cache`, git-ignored `runs/`). The redundancy graph meets
``--target-macs`` by the budget search over τ; L1 and HRank then get the MAC fraction it reached as their
own budget (ratio search), so all three remove the same work. Each pruned model is evaluated right after
removal and after the same short fine-tune. Everything runs on one thread.

    python benchmarks/redundancy_graph_fashion.py --train 12000 --test 2000 --dense-epochs 4 \
        --finetune-epochs 2 --target-macs 0.5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import prunekit
from prunekit.data import build_loaders
from prunekit.measure import cost
from prunekit.methods.budget import BudgetResult
from prunekit.models import create
from prunekit.pipeline import calibration_batch
from prunekit.train import TrainConfig, evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--train", type=int, default=12000, help="training images (first n)")
    parser.add_argument("--test", type=int, default=2000, help="test images (first n)")
    parser.add_argument("--dense-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--hrank-images", type=int, default=256)
    parser.add_argument("--cache", type=Path, default=Path("runs/redundancy_graph_fashion"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    train, test, _ = build_loaders(
        "fashion_mnist", 128, root=args.data_root, download=False, limit_train=args.train,
        limit_test=args.test, eval_batch_size=500,
    )  # fmt: skip
    shape = (1, 28, 28)
    dense_cfg = TrainConfig.from_dict(
        {"epochs": args.dense_epochs, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
         "schedule": "cosine", "amp": "off", "channels_last": "off", "seed": 0}
    )  # fmt: skip
    dense_path = args.cache / f"resnet20_fmnist_{args.train}img_{args.dense_epochs}ep.safetensors"
    started = time.process_time()
    if dense_path.is_file():
        dense = prunekit.load(dense_path)
        print(f"dense model from {dense_path}")
    else:
        dense = create("resnet20", num_classes=10, in_channels=1)
        fit(dense, train, test, dense_cfg, progress=False)
        prunekit.save(dense, dense_path, info={"train": dense_cfg.to_dict()})
        print(f"dense model trained ({time.process_time() - started:.0f} CPU s), saved to {dense_path}")
    dense.eval()
    dense_top1 = evaluate(dense, test)["top1"]
    dense_macs = cost(dense, shape).macs

    train.set_epoch(0)
    calib = calibration_batch(train, max(100, args.hrank_images)).cpu()
    finetune = TrainConfig.from_dict(
        {"epochs": args.finetune_epochs, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
         "schedule": "cosine", "amp": "off", "channels_last": "off", "seed": 0}
    )  # fmt: skip

    rows = []
    target = args.target_macs
    for name, options in (
        ("redundancy_graph", {"n_images": 100}),
        ("l1", {}),
        ("hrank", {"n_images": args.hrank_images}),
    ):
        t0 = time.process_time()
        method = prunekit.methods.create_method(name, f"target_macs={target}", **options)
        method.prepare(dense, calib)
        pruned = prunekit.methods.meet(method, dense, calib)
        t_prune = time.process_time() - t0
        budget: BudgetResult | None = pruned.budget
        model = pruned.model
        macs = cost(model, shape).macs
        if name == "redundancy_graph":
            target = macs / dense_macs  # the others meet exactly what the graph reached
            tau = pruned.details["tau"]
        removed = evaluate(model, test)["top1"]
        t1 = time.process_time()
        fit(model, train, test, finetune, progress=False)
        t_ft = time.process_time() - t1
        tuned = evaluate(model.eval(), test)["top1"]
        widths = [m.out_channels for n, m in model.named_modules() if n.endswith("conv1") and "layer" in n]
        rows.append((name, macs, removed, tuned, t_prune, t_ft, widths, budget))

    print(
        f"\nFashion-MNIST, ResNet-20 (1x28x28), first {args.train} train / {args.test} test images; dense "
        f"{args.dense_epochs} epochs; fine-tune {args.finetune_epochs} epochs (SGD 0.01 cosine); 1 thread"
    )
    print(f"dense: top-1 {dense_top1:.2f} %, {dense_macs:,} MACs")
    print(f"redundancy graph tau found by the budget search: {tau:.4f} (target_macs={args.target_macs})")
    print(
        f"{'method':18} {'MACs':>12} {'fraction':>8} {'top-1 removed':>14} {'top-1 tuned':>12} "
        f"{'prune CPU s':>11} {'tune CPU s':>10}"
    )
    for name, macs, removed, tuned, t_prune, t_ft, _, _ in rows:
        print(
            f"{name:18} {macs:12,} {macs / dense_macs:8.4f} {removed:14.2f} {tuned:12.2f} "
            f"{t_prune:11.1f} {t_ft:10.1f}"
        )
    for name, *_, widths, _ in rows:
        print(f"  {name} block conv1 widths: {widths}")
    print(f"total CPU: {time.process_time() - started:.0f} s")


if __name__ == "__main__":
    main()
