"""Does `target_latency=F` land on F × the dense latency, measured? ResNet-56, L1, deployed form.

For each round_to (none, and the given ones) the latency budget is met by the search: the lookup table
proposes, each candidate is timed against the dense model (interleaved) and the table's target corrected
until the measurement is within 5 % (`methods.latency_budget.meet_latency_budget`); the steps are printed.
Then the pruned model is timed against the dense one once more, independently
(`methods.latency_budget.confirm_latency`): both fractions are printed with the per-round range. Issue 14's
target: within 10 % of F.

    OMP_NUM_THREADS=1 python benchmarks/latency_budget_check.py --target 0.5 --batch 1 --round-to 8
"""

from __future__ import annotations

import argparse
import time

import torch

from prunekit.methods import create_method, meet
from prunekit.methods.alignment import deployment_selection
from prunekit.methods.selection import Selection
from prunekit.models import create


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--round-to", default="8", help="comma list of round_to values (N or auto)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.arch).eval()
    x = torch.randn(2, 3, 32, 32)
    for round_to in [None, *[r for r in args.round_to.split(",") if r]]:
        started = time.time()
        selection = deployment_selection(
            Selection.of(target_latency=args.target), round_to, args.threads, args.batch
        )
        pruned = meet(create_method("l1", selection), model, x)
        d = pruned.details["latency"]
        low, high = d["measured_fraction_range"]
        inside = "within" if abs(d["measured_fraction"] - args.target) <= 0.1 * args.target else "NOT within"
        widths = sorted({m.out_channels for m in pruned.model.modules() if isinstance(m, torch.nn.Conv2d)})
        print(
            f"round_to={round_to}: target {args.target:g}, predicted {d['predicted_fraction']:.3f}, measured "
            f"{d['measured_fraction']:.3f} ({low:.3f}–{high:.3f}); dense {d['dense_ms']:.2f} ms, pruned "
            f"{d['pruned_ms']:.2f} ms at batch {args.batch}, {args.threads} thread(s); widths {widths}; "
            f"{time.time() - started:.0f} s; {inside} ±10 %"
        )
        for k, step in enumerate(d["search_steps"], 1):
            print(
                f"    search candidate {k}: table target {step['table_target']:.3f}, predicted "
                f"{step['predicted']:.3f}, measured {step['measured']:.3f} "
                f"({step['measured_low']:.3f}–{step['measured_high']:.3f})"
            )


if __name__ == "__main__":
    main()
