"""Does `--round-to auto`'s fastest-widths rule turn the same MAC budget into more speed? ResNet-56, L1.

At each MAC budget (≈2× and ≈4× fewer MACs) two models are pruned from the same dense ResNet-56: the plain
aligned answer (``round_to=N``, N the multiple auto measures, here given as a number) and ``round_to=auto``
(the same multiple, then `methods.latency_budget.fastest_aligned` moves widths one multiple up or down
where the latency table predicts the budget runs faster). All are timed in the deployed form (BN folded
+ `torch.jit.freeze`), interleaved round by round with the dense model, at the batch size the rule
predicted for. Printed per model: MAC speed-up, latency speed-up as the median of the per-round ratios
(load hits a round's models alike) and as the ratio of the fastest samples (load only adds time), and
both over the MAC speed-up (issue 14: ≥ 0.9 at batch 64, ≥ 0.8 at batch 1).

``--allocations`` adds hand-built models instead: per stage the residual and the inner (block conv1) width,
e.g. ``8,8,24,24,56,56`` (stage 1 residual 8, inner 8, stage 2 24/24, stage 3 56/56), each printed with
its MACs and the fraction the latency table predicts, to check the table's ranking on real models.

    OMP_NUM_THREADS=1 python benchmarks/fastest_widths.py --batch 64 --rounds 10
    OMP_NUM_THREADS=1 python benchmarks/fastest_widths.py --batch 64 --rounds 8 \
        --allocations "8,8,24,24,56,56;8,8,16,32,64,48;16,16,8,24,48,24"
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import torch
from torch import nn

import prunekit
from prunekit.measure import compare_latency, cost
from prunekit.methods.alignment import resolve_round_to
from prunekit.models import create

INPUT_SHAPE = (3, 32, 32)


def widths(model: nn.Module) -> str:
    """Distinct conv widths with how many convs have each, e.g. ``8×19 24×17 56×18``."""
    count = collections.Counter(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    return " ".join(f"{w}×{n}" for w, n in sorted(count.items()))


def stage_allocation(dense: nn.Module, calib: torch.Tensor, widths: list[int], batch: int, threads: int):
    """ResNet-56 with per-stage (residual, inner) widths, the first channels kept (only shapes matter for
    time); with its MAC fraction and the latency table's predicted fraction at `batch`."""
    from prunekit.methods.budget import MacCounter
    from prunekit.methods.latency_budget import layer_shapes, table_for
    from prunekit.methods.selection import Budget
    from prunekit.surgery.channels import apply_with_report

    counter = MacCounter(dense, calib)
    full = {1: 16, 2: 32, 3: 64}
    ratios: dict[str, float] = {}
    for group in counter.groups:
        stage = int(group[-1][5]) if group[-1].startswith("layer") else 1  # "layerS.B.convK"; the stem: 1
        kept = widths[2 * (stage - 1) + (len(group) == 1)]  # a residual group has many members
        ratios.update(
            dict.fromkeys(group, (full[stage] - kept + 0.5) / full[stage] if kept < full[stage] else 0)
        )
    model = apply_with_report(dense, counter.plan(ratios), calib, check_masking=False)[0].eval()
    table = table_for(Budget("target_macs", 0.5, batch_size=batch, threads=threads))
    predicted = [sum(table.lookup_many(layer_shapes(m, calib).values())) for m in (dense, model)]
    return model, counter.analytic(ratios) / counter.dense, predicted[1] / predicted[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed forwards per model (default 10/round at batch >= 16, else 50)",
    )
    parser.add_argument("--budgets", default="0.5,0.25")
    parser.add_argument("--allocations", default="", help="';'-separated per-stage residual,inner widths")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = create("resnet56").eval()
    calib = torch.randn(2, *INPUT_SHAPE)
    dense_macs = cost(dense, INPUT_SHAPE).macs
    one, five, _ = os.getloadavg()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}; "
        f"load average {one:.2f} / {five:.2f} on {os.cpu_count()} CPUs"
    )
    models: dict[str, nn.Module] = {"dense": dense}
    for text in (a for a in args.allocations.split(";") if a.strip()):
        name = text.replace(" ", "")
        model, macs, predicted = stage_allocation(
            dense, calib, [int(w) for w in name.split(",")], args.batch, args.threads
        )
        models[name] = model
        print(f"  {name:<18} {macs:.4f} of the dense MACs, the table predicts {predicted:.3f} of its latency")
    auto = resolve_round_to("auto", args.threads, args.batch)
    for budget in (float(b) for b in args.budgets.split(",") if b.strip() and not args.allocations):
        for round_to in ("plain", "auto"):
            started = time.time()
            # ResNet-56's 16-wide first stage halves a measured 16 to 8 (`Selection.round_to_for`); the plain
            # model is given the multiple auto ends up with, so only the width rule differs.
            given = "auto" if round_to == "auto" else str(auto if auto * 2 <= 16 else auto // 2)
            small = prunekit.prune(
                dense, calib, method="l1", target_macs=budget, round_to=given, latency_batch=args.batch,
                latency_threads=args.threads,
            ).eval()  # fmt: skip
            name = f"{budget:g} r={given}"
            models[name] = small
            fraction = cost(small, INPUT_SHAPE).macs / dense_macs
            took = time.time() - started
            print(f"  {name:<10} {fraction:.4f} of the dense MACs, widths {widths(small)} ({took:.1f} s)")
    repeats = args.repeats or (10 if args.batch >= 16 else 50) * args.rounds
    timed = compare_latency(
        models,
        INPUT_SHAPE,
        batch_size=args.batch,
        threads=args.threads,
        warmup=2,
        repeats=repeats,
        rounds=args.rounds,
    )
    base = timed["dense"].stats
    one, five, _ = os.getloadavg()
    print(
        f"\nbatch {args.batch}, {repeats // args.rounds} forwards × {args.rounds} rounds per model; "
        f"load average {one:.2f} / {five:.2f}"
    )
    print(f"{'model':<18} MAC x  lat x (rounds)      lat x (fastest)  lat/MAC (rounds)  lat/MAC (fastest)")
    for name, result in timed.items():
        stats = result.stats
        ratios = [d / m for d, m in zip(base.round_medians, stats.round_medians, strict=True)]
        mac_x = dense_macs / cost(models[name], INPUT_SHAPE).macs
        lat_x, fast_x = statistics.median(ratios), base.min_ms / stats.min_ms
        spread = f"({min(ratios):.2f}–{max(ratios):.2f})"
        print(
            f"{name:<18} {mac_x:6.2f}  {lat_x:5.2f} {spread:<13} {fast_x:16.2f} {lat_x / mac_x:17.2f} "
            f"{fast_x / mac_x:18.2f}"
        )


if __name__ == "__main__":
    main()
