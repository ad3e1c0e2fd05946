"""Every method at one MAC budget on real Fashion-MNIST: `prunekit compare` with the issue's settings.

CIFAR-style ResNet-20 with one input channel, trained once; every registered method whose default schedule
meets a MAC budget (criteria one-shot, regularisers after a sparsify stage, Torch-Pruning's pruners as
extra rows) at each budget, the same fine-tune, several seeds. Writes compare.md / compare.csv / plots into
``--out`` and prints the table; rerun with ``--resume`` after an interruption.

    OMP_NUM_THREADS=1 python benchmarks/compare_fashion.py --limit-train 6000 --limit-test 2000 \\
        --epochs 3 --sparsify-epochs 1 --finetune-epochs 1 --budget 0.5,0.25 --seeds 2 --threads 1

On a GPU (longer budgets, ResNet-56):

    python benchmarks/compare_fashion.py --model resnet56 --device cuda --epochs 30 --sparsify-epochs 10 \\
        --finetune-epochs 20 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prunekit.cli import main as prunekit_main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: TPP's and GReg's λ ramps declare their own stage length (110,001 steps by default); on a CPU they get the
#: short ramp (about 65 steps: 20 λ updates, 45 held) unless --full-schedules.
_RAMP = "update_reg_interval=1 reg_granularity=0.05 stabilize_reg_interval=45"
SHORT_RAMPS = {
    "tpp": f"{_RAMP} zero_out_interval=2",
    "greg1": _RAMP,
    "greg2": f"{_RAMP} reg_granularity_pick=2e-3",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-root", default=str(SHARED_DATA))
    p.add_argument("--limit-train", type=int, default=6000)
    p.add_argument("--limit-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    p.add_argument("--sparsify-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--budget", default="0.5,0.25")
    p.add_argument("--methods", default="all")
    p.add_argument("--seeds", default="2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/compare_fashion")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--full-schedules", action="store_true", help="TPP/GReg with their published λ ramps")
    args = p.parse_args()
    argv = [
        "compare",
        "--model", args.model,
        "--data", "fashion_mnist",
        "--data-root", args.data_root,
        "--no-download",
        "--limit-train", str(args.limit_train),
        "--limit-test", str(args.limit_test),
        "--epochs", str(args.epochs),
        "--lr", "0.1",
        "--batch-size", "128",
        "--sparsify-epochs", str(args.sparsify_epochs),
        "--finetune-epochs", str(args.finetune_epochs),
        "--budget", args.budget,
        "--methods", args.methods,
        "--seeds", args.seeds,
        "--device", args.device,
        "--threads", str(args.threads),
        "--out", args.out,
    ]  # fmt: skip
    if args.resume:
        argv.append("--resume")
    if not args.full_schedules:
        from prunekit.compare import parse_methods

        for method in parse_methods(args.methods):
            for item in SHORT_RAMPS.get(method, "").split():
                argv += ["--option", f"{method}.{item}"]
    code = prunekit_main(argv)
    if code == 0:
        print((Path(args.out) / "compare.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
