"""CPU latency of dense vs pruned ResNet-56 in deployed form: does a MAC cut become a latency cut?

Issue 3 §8. One run builds, from the same randomly initialised ResNet-56 (option A):

- ``dense``;
- ``L1 2x`` and ``L1 4x``: the L1 criterion at one uniform ratio over every prunable layer, residual
  stages included, chosen as the ratio whose MACs come closest to 0.5 and 0.25 of the dense MACs (the
  16/32/64 widths move in steps, so the exact fractions are not reachable; the reached MACs are printed);
- ``low-rank NC ~2x``: every 3x3 stride-1 conv with as many inputs as outputs (all block convs but the
  two downsampling ones; the 3-channel stem would barely shrink) decomposed with the NC scheme at one
  rank fraction, chosen the same way to come closest to 0.5 of the dense MACs;
- ``low-rank NC ~2x r%8``: the same with every rank rounded to a multiple of 8.

Issue 14 adds, side by side in the same run (skip them with ``--no-issue14``):

- ``L1 2x r=N`` / ``L1 4x r=N``: `prunekit.prune(..., target_macs=0.5/0.25, round_to=N)`, N from
  ``--round-to`` (default ``auto``: the cached width sweep of `measure.latency_table.preferred_round_to`,
  at the target batch and ``--threads``; with a MAC budget auto also moves widths one multiple up or
  down where the latency table predicts the budget runs faster), and beside them the same with the
  multiple auto measured given as a number (``--compare-round-to``, default 8: aligned widths without the
  latency preference);
- ``L1 lat 0.5``: `target_latency=0.5` at the target batch and ``--threads`` (lookup table, aligned);
- ``TP 2x`` / ``TP 4x``: Torch-Pruning's MetaPruner (L1 magnitude, ``round_to=8``, local ratio bisected to
  the same MAC fractions), on the same dense model;
- onnxruntime vs the PyTorch deployed form for ``dense`` and ``L1 2x r=N`` (same threads).

All models are timed by `prunekit.measure.compare_latency`, interleaved round by round on the deployed
form (BN folded, then `torch.jit.freeze` / `torch.compile` / eager per ``--mode``), one table per batch
size, with the latency speed-up next to the MAC speed-up. The target is latency speed-up >= 0.7 x MAC
speed-up at batch 64 for the channel-pruned models. For reference to specs/landscape.md §8 (which
measured unfolded eager models) the dense and pruned models are also timed as given, in eager mode.

Weights are random: latency does not depend on the values, only on the shapes.

    python benchmarks/latency.py --threads 1 --batch-sizes 1,64
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.measure import LatencyResult, compare_latency, cost
from prunekit.methods import create_method
from prunekit.methods.budget import MacCounter
from prunekit.models import create
from prunekit.surgery import apply_with_report, decompose

INPUT_SHAPE = (3, 32, 32)
TARGET_RATIO = 0.7  # latency speed-up / MAC speed-up required at batch 64
TARGET_BATCH = 64
#: Issue 14: latency speed-up / MAC speed-up of the L1 models with --round-to, per batch size.
ISSUE14_TARGET = {64: 0.9, 1: 0.8}
DEPLOYED_FORM = {
    "freeze": "BN folded + torch.jit.freeze",
    "compile": "BN folded + torch.compile",
    "eager": "BN folded, eager",
}
#: Candidate uniform ratios and rank fractions: k/64 reaches every width of a 16/32/64-channel net.
GRID = tuple(k / 64 for k in range(1, 61))

#: specs/landscape.md §8, ResNet-56 option B, eager (BN not folded), 1 thread: batch -> rows of
#: (model, MAC speed-up, latency ms, latency speed-up).
LANDSCAPE_EAGER = {
    1: (("dense", 1.0, 7.33, 1.0), ("full 30 %", 2.10, 5.33, 1.38), ("full 50 %", 3.95, 3.81, 1.92)),
    64: (("dense", 1.0, 277.0, 1.0), ("full 30 %", 2.10, 161.0, 1.72), ("full 50 %", 3.95, 101.0, 2.75)),
}


@dataclass(frozen=True)
class Variant:
    name: str
    model: nn.Module
    macs: int
    detail: str  # how it was built


def closest(candidates: Sequence[float], fraction_of: dict[float, float], target: float) -> float:
    return min(candidates, key=lambda c: (abs(fraction_of[c] - target), c))


def l1_pruned(model: nn.Module, example: torch.Tensor, target: float) -> Variant:
    """L1 at the uniform ratio whose MACs come closest to `target` x dense."""
    counter = MacCounter(model, example)
    names = [name for group in counter.groups for name in group]
    fraction_of = {r: counter.analytic(dict.fromkeys(names, r)) / counter.dense for r in GRID}
    ratio = closest(GRID, fraction_of, target)
    plan = create_method("l1", rates=repr(ratio)).plan(model, example)
    pruned, report = apply_with_report(model, plan, example)
    widths = sorted({report.widths_after[name] for name in names})
    name = f"L1 {round(1 / target)}x"
    detail = f"uniform ratio {ratio:.4f} over {len(names)} layers, widths {widths}"
    return Variant(name, pruned.eval(), report.macs_after, detail)


def decomposable(model: nn.Module) -> list[str]:
    """3x3 stride-1 convs with as many inputs as outputs."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Conv2d
        and m.kernel_size == (3, 3)
        and m.stride == (1, 1)
        and m.groups == 1
        and m.in_channels == m.out_channels
    ]


def low_rank(model: nn.Module, target: float, dense_macs: int, multiple: int = 1) -> Variant:
    """NC decomposition of `decomposable` convs at rank round(f * width), f closest to `target` x dense;
    with `multiple` > 1 every rank is rounded to a multiple of it (SIMD-friendly widths).

    A rank-r NC factor of an n x c x 3 x 3 conv costs r (9c + n) MACs per position instead of 9cn."""
    layers = decomposable(model)
    convs = {name: model.get_submodule(name) for name in layers}
    layer_macs = {row.name: row.macs for row in cost(model, INPUT_SHAPE).layers if row.name in convs}

    def ranks(f: float) -> dict[str, int]:
        return {
            name: max(multiple, multiple * round(f * conv.out_channels / multiple))
            for name, conv in convs.items()
        }

    def macs_at(f: float) -> float:
        saved = 0.0
        for name, rank in ranks(f).items():
            n, c = convs[name].out_channels, convs[name].in_channels
            saved += layer_macs[name] * (1 - rank * (9 * c + n) / (9 * c * n))
        return (dense_macs - saved) / dense_macs

    fraction_of = {f: macs_at(f) for f in GRID}
    f = closest(GRID, fraction_of, target)
    decomposed = decompose(model, {name: ("NC", rank) for name, rank in ranks(f).items()}).eval()
    detail = f"rank {f:.4f} x width ({sorted(set(ranks(f).values()))}) on {len(layers)} 3x3 stride-1 convs"
    name = f"low-rank NC ~{round(1 / target)}x" + (f" r%{multiple}" if multiple > 1 else "")
    return Variant(name, decomposed, cost(decomposed, INPUT_SHAPE).macs, detail)


def aligned_l1(
    model: nn.Module, example: torch.Tensor, round_to: str, threads: int, batch: int, **budget: float
) -> Variant:
    """prunekit's L1 with kept widths multiples of `round_to` (a number or "auto": measured at `batch` and
    `threads`, halved to fit the model's narrowest layers), at a MAC or latency budget stated at `batch`."""
    import prunekit

    small = prunekit.prune(
        model, example, method="l1", round_to=round_to, latency_batch=batch, latency_threads=threads,
        **budget,
    ).eval()  # fmt: skip
    widths = sorted({m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)})
    (key, value), *_ = budget.items()
    name = f"L1 lat {value:g}" if key == "target_latency" else f"L1 {round(1 / value)}x r={round_to}"
    return Variant(
        name, small, cost(small, INPUT_SHAPE).macs, f"{key}={value:g}, round_to={round_to}, {widths}"
    )


def torch_pruning_l1(model: nn.Module, example: torch.Tensor, target: float, dense_macs: int) -> Variant:
    """Torch-Pruning's MetaPruner (L1 magnitude, its own round_to=8), local ratio bisected to `target`."""
    import copy

    import torch_pruning as tp

    from prunekit.surgery.graph import CUSTOMIZED_PRUNERS

    def pruned_at(ratio: float) -> nn.Module:
        m = copy.deepcopy(model)
        tp.pruner.MetaPruner(
            m, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
            round_to=8, ignored_layers=[m.fc], customized_pruners=CUSTOMIZED_PRUNERS,
        ).step()  # fmt: skip
        return m.eval()

    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):
        mid = (lo + hi) / 2
        m = pruned_at(mid)
        fraction = cost(m, INPUT_SHAPE).macs / dense_macs
        if best is None or abs(fraction - target) < abs(best[1] - target):
            best = (mid, fraction, m)
        lo, hi = (mid, hi) if fraction > target else (lo, mid)
    ratio, _, m = best
    widths = sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)})
    return Variant(f"TP {round(1 / target)}x", m, cost(m, INPUT_SHAPE).macs, f"ratio {ratio:.3f}, {widths}")


def build_variants(
    seed: int,
    issue14: bool = True,
    round_to: str = "auto",
    threads: int = 1,
    compare_round_to: str = "8",
    auto_batch: int = TARGET_BATCH,
) -> list[Variant]:
    torch.manual_seed(seed)
    dense = create("resnet56").eval()
    dense_macs = cost(dense, INPUT_SHAPE).macs
    example = torch.randn(1, *INPUT_SHAPE)
    variants = [
        Variant("dense", dense, dense_macs, "resnet56 option A"),
        l1_pruned(dense, example, 0.5),
        l1_pruned(dense, example, 0.25),
        low_rank(dense, 0.5, dense_macs),
        low_rank(dense, 0.5, dense_macs, multiple=8),
    ]
    if issue14:
        from prunekit.methods.alignment import resolve_round_to

        measured = resolve_round_to(round_to, threads, auto_batch)
        print(f"round_to {round_to} -> {measured} (width sweep at batch {auto_batch}, {threads} thread(s))")
        calib = torch.randn(2, *INPUT_SHAPE)
        plain = [r for r in compare_round_to.split(",") if r and r != round_to]
        variants += [
            *[aligned_l1(dense, calib, r, threads, auto_batch, target_macs=0.5) for r in plain],
            aligned_l1(dense, calib, round_to, threads, auto_batch, target_macs=0.5),
            *[aligned_l1(dense, calib, r, threads, auto_batch, target_macs=0.25) for r in plain],
            aligned_l1(dense, calib, round_to, threads, auto_batch, target_macs=0.25),
            # depth is for MAC budgets: the latency budget takes auto's widths
            aligned_l1(dense, calib, round_to.replace("+depth", ""), threads, auto_batch, target_latency=0.5),
            torch_pruning_l1(dense, example, 0.5, dense_macs),
            torch_pruning_l1(dense, example, 0.25, dense_macs),
        ]
    return variants


def onnx_rows(variants: Sequence[Variant], batch: int, threads: int, rounds: int) -> list[str]:
    """onnxruntime vs the PyTorch deployed form, round by round, for the dense and the first aligned model."""
    import tempfile
    from pathlib import Path

    from prunekit.export import export_onnx, onnx_latency
    from prunekit.measure import LatencyStats, speedup

    aligned = [v for v in variants if v.name.startswith("L1 2x r=")][-1:]  # the --round-to one
    chosen = [v for v in variants if v.name == "dense"] + aligned
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in chosen:
            path = Path(tmp) / "m.onnx"
            export_onnx(v.model, torch.randn(2, *INPUT_SHAPE), path)
            ort, pt = [], []
            for _ in range(rounds):
                ort += onnx_latency(path, INPUT_SHAPE, batch_size=batch, threads=threads, warmup=1, repeats=3)
                pt += list(
                    compare_latency(
                        {"m": v.model}, INPUT_SHAPE, batch_size=batch, threads=threads, warmup=1, repeats=3,
                        rounds=1,
                    )["m"].samples
                )  # fmt: skip
            o, p = LatencyStats.of_samples(ort), LatencyStats.of_samples(pt)
            lines.append(f"  {v.name:<14} onnxruntime {o}  PyTorch freeze {p}  onnxruntime x {speedup(p, o)}")
    return lines


def round_medians(result: LatencyResult, rounds: int) -> list[float]:
    per_round = len(result.samples) // rounds
    chunks = [sorted(result.samples[i * per_round : (i + 1) * per_round]) for i in range(rounds)]
    return [chunk[len(chunk) // 2] for chunk in chunks]


def speedups(
    variants: Sequence[Variant], results: dict[str, LatencyResult]
) -> dict[str, tuple[float, float]]:
    """(MAC speed-up, latency speed-up) of each variant over the first (dense) one."""
    dense = variants[0]
    base = results[dense.name].median_ms
    return {v.name: (dense.macs / v.macs, base / results[v.name].median_ms) for v in variants}


def table(
    variants: Sequence[Variant], results: dict[str, LatencyResult], rounds: int, target: bool
) -> list[str]:
    """Rows: MACs, speed-ups, median ± IQR of all samples and the range of the per-round medians.

    "latency x" is the ratio of the medians of all samples; "best-round x" that of the fastest round
    medians (the min-of-medians protocol of specs/landscape.md §8), less sensitive to a loaded machine;
    "fastest x" that of the fastest samples (load only adds time, and more to the longer forward: on a
    shared machine the most faithful of the three)."""
    ups = speedups(variants, results)
    header = (
        "model",
        "MACs",
        "MAC x",
        "median ms",
        "± IQR",
        "round medians",
        "latency x",
        "best-round x",
        "fastest x",
        "lat x / MAC x",
        "fastest x / MAC x",
    )
    best_dense = min(round_medians(results[variants[0].name], rounds))
    fastest_dense = min(results[variants[0].name].samples)
    rows = [header]
    for v in variants:
        r = results[v.name]
        mac_x, lat_x = ups[v.name]
        per_round = round_medians(r, rounds)
        verdict = (
            "" if v is variants[0] or not target else ("  ok" if lat_x / mac_x >= TARGET_RATIO else "  LOW")
        )
        rows.append(
            (
                v.name,
                f"{v.macs / 1e6:.2f} M",
                f"{mac_x:.2f}",
                f"{r.median_ms:.3f}",
                f"{r.spread_ms:.3f}",
                f"{min(per_round):.2f}-{max(per_round):.2f}",
                f"{lat_x:.2f}",
                f"{best_dense / min(per_round):.2f}",
                f"{fastest_dense / min(r.samples):.2f}",
                f"{lat_x / mac_x:.2f}{verdict}",
                f"{fastest_dense / min(r.samples) / mac_x:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,64", help="comma separated, e.g. 1,64")
    parser.add_argument("--mode", choices=("freeze", "compile", "eager"), default="freeze")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (A B C D A B C D ...)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed forwards per model (default 100, 40 at batch >= 16)"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 10 repeats: a smoke run")
    parser.add_argument("--no-eager-reference", action="store_true", help="skip the unfolded eager timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-issue14", action="store_true", help="skip round_to / latency budget / TP / ONNX"
    )
    parser.add_argument("--round-to", default="auto", help="round_to of the aligned L1 models (N or auto)")
    parser.add_argument(
        "--auto-batch",
        type=int,
        default=TARGET_BATCH,
        help="batch size the round_to / latency-budget models are built for (their latency table's batch)",
    )
    parser.add_argument(
        "--compare-round-to",
        default="8",
        help="comma list of round_to values timed beside --round-to ('' none)",
    )
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rounds = 2 if args.quick else args.rounds

    def repeats(batch: int) -> int:
        if args.quick:
            return 10
        return args.repeats if args.repeats is not None else (100 if batch < 16 else 40)

    print(f"torch {torch.__version__}, {args.threads} thread(s), mode {args.mode}, {rounds} rounds; {load()}")
    print(f"weights are random (seed {args.seed}): latency depends on shapes only, not on values")
    variants = build_variants(
        args.seed, not args.no_issue14, args.round_to, args.threads, args.compare_round_to, args.auto_batch
    )
    models = {v.name: v.model for v in variants}
    for v in variants:
        print(f"  {v.name:<18} {v.macs:>12,} MACs  {v.detail}")

    for batch in batch_sizes:
        n = repeats(batch)
        results = compare_latency(
            models,
            INPUT_SHAPE,
            batch_size=batch,
            threads=args.threads,
            mode=args.mode,
            warmup=args.warmup,
            repeats=n,
            rounds=rounds,
        )
        print(
            f"\nbatch {batch}, deployed ({DEPLOYED_FORM[args.mode]}), {n} timed forwards per model; {load()}"
        )
        print("\n".join(table(variants, results, rounds, batch == TARGET_BATCH)))
        if batch == TARGET_BATCH:
            ratios = {name: lat_x / mac_x for name, (mac_x, lat_x) in speedups(variants, results).items()}
            channel = [v.name for v in variants[1:3]]
            verdict = "PASS" if all(ratios[name] >= TARGET_RATIO for name in channel) else "FAIL"
            shown = "; ".join(f"{v.name} {ratios[v.name]:.2f}" for v in variants[1:])
            print(
                f"target latency x >= {TARGET_RATIO} MAC x at batch {TARGET_BATCH} ({', '.join(channel)}): "
                f"{verdict}  [{shown}]"
            )

        if not args.no_issue14:
            # Issue 14: latency x >= 0.9 MAC x at batch 64, >= 0.8 at batch 1, L1 with --round-to (auto).
            need = ISSUE14_TARGET.get(batch)
            ups = speedups(variants, results)
            rows = [v.name for v in variants if v.name.endswith(f"x r={args.round_to}")]
            if need is not None and rows:
                dense_min = min(results["dense"].samples)
                fast = {n: dense_min / min(results[n].samples) / ups[n][0] for n in rows}
                for label, got in (("medians", {n: ups[n][1] / ups[n][0] for n in rows}), ("fastest", fast)):
                    shown = "; ".join(f"{n} {got[n]:.2f}" for n in rows)
                    verdict = "PASS" if all(got[n] >= need for n in rows) else "FAIL"
                    print(
                        f"issue 14 ({label}): latency x >= {need} MAC x at batch {batch} ({shown}): {verdict}"
                    )
            print(f"\nbatch {batch}, onnxruntime vs PyTorch deployed, {args.threads} thread(s); {load()}")
            print("\n".join(onnx_rows(variants, batch, args.threads, rounds)))

        if not args.no_eager_reference:
            reference = {v.name: v.model for v in variants[:3]}
            eager = compare_latency(
                reference,
                INPUT_SHAPE,
                batch_size=batch,
                threads=args.threads,
                deployed=False,
                warmup=args.warmup,
                repeats=n,
                rounds=rounds,
            )
            print(f"\nbatch {batch}, eager as given (BN not folded), for specs/landscape.md §8; {load()}")
            print("\n".join(table(variants[:3], eager, rounds, False)))
            if batch in LANDSCAPE_EAGER:
                shown = "; ".join(
                    f"{name} ({mac:.2f}x MACs) {ms:g} ms, {lat:.2f}x"
                    for name, mac, ms, lat in LANDSCAPE_EAGER[batch]
                )
                print(f"landscape §8 (option B, eager, 1 thread): {shown}")


if __name__ == "__main__":
    main()
