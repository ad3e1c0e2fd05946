"""Two models with the same architecture: how often does timing them apart report a "speed-up"?

Issue 9 ("honest latency in reports"): a model with the dense architecture was once reported 1.47× faster
than the dense model, because each run timed its own model in its own process at its own time. This
benchmark times two copies of one architecture (different random weights, identical shapes, so any
measured difference is noise) in two ways, `--trials` times each, side by side:

- **apart**: model A timed alone, then model B timed alone (what separate runs' summaries hold); the
  ratio of the two medians is what a report that divides them prints;
- **together**: both timed interleaved in one `compare_latency` call, 10 rounds (what `prunekit report
  --measure` does); the verdict is `measure.speedup(..., paired=True)`: the range of the per-round ratios,
  "≈1×" when it holds 1×. The unpaired quartile verdict (what a report can say about figures from
  separate runs that recorded their spread) is printed beside it.

A third model, the same ResNet at half the widths (about 4× fewer MACs), is timed in the same interleaved
call, to show that the paired verdict still sees a real speed-up through the noise.

A load generator (`--load`, busy worker processes) can run during alternate trials, to imitate the shared
machine that other runs share; it hits the "apart" timings unevenly and the interleaved ones evenly.

    OMP_NUM_THREADS=1 python benchmarks/report_latency_noise.py --arch resnet20 --trials 6 --load 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from prunekit.measure import compare_latency, cost, speedup
from prunekit.models import create, default_input_shape
from prunekit.models.resnet_cifar import CifarResNet


def _busy(stop_at: float) -> None:
    x = 0.0
    while time.time() < stop_at:
        x += 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--load", type=int, default=1, help="busy processes during odd trials (0: none)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pair = {"a": create(args.arch).eval(), "b": create(args.arch).eval()}
    half = CifarResNet(int(args.arch.removeprefix("resnet")), widths=(8, 16, 32)).eval()
    shape = default_input_shape(args.arch)
    print(
        f"{args.arch}, batch 1, 1 thread, {args.repeats} timed forwards per model; A, B: two copies of one "
        f"shape; C: half widths ({cost(pair['a'], shape).macs / cost(half, shape).macs:.2f}× fewer MACs)"
    )
    print(
        f"{'trial':>5} {'load':>4} {'apart A/B':>10}  {'together A/B (paired)':<30} {'A/B unpaired':<26} "
        "A/C paired"
    )
    apart_ratios, verdicts, real = [], [], []
    for trial in range(args.trials):
        workers = []
        loaded = args.load > 0 and trial % 2 == 1
        if loaded:
            # The load starts half-way through the "apart" timing of A, so it hits B harder than A.
            stop = time.time() + 60
            workers = [mp.Process(target=_busy, args=(stop,)) for _ in range(args.load)]
        ratio_apart = _apart_with_load(pair, shape, args.repeats, workers)
        together = compare_latency({**pair, "c": half}, shape, repeats=args.repeats, rounds=10, warmup=5)
        for w in workers:
            w.terminate()
            w.join()
        verdict = speedup(together["a"].stats, together["b"].stats, paired=True)  # A/B, as "apart"
        unpaired = speedup(together["a"].stats, together["b"].stats)
        faster = speedup(together["a"].stats, together["c"].stats, paired=True)
        apart_ratios.append(ratio_apart)
        verdicts.append(verdict)
        real.append(faster)
        print(
            f"{trial:>5} {'yes' if loaded else 'no':>4} {ratio_apart:>9.2f}×  "
            f"{verdict.ratio:.2f}× → {verdict!s:<22} {unpaired!s:<26} {faster}"
        )
    spread = max(apart_ratios) / min(apart_ratios)
    noise = sum(v.within_noise for v in verdicts)
    print(
        f"apart ratios {min(apart_ratios):.2f}–{max(apart_ratios):.2f}× (max/min {spread:.2f}); "
        f"together: {noise}/{len(verdicts)} verdicts within noise, medians "
        f"{min(v.ratio for v in verdicts):.2f}–{max(v.ratio for v in verdicts):.2f}×; A/C: "
        f"{sum(not v.within_noise for v in real)}/{len(real)} real speed-ups found"
    )


def _apart_with_load(
    models: dict[str, torch.nn.Module], shape: tuple[int, ...], repeats: int, workers: list[mp.Process]
) -> float:
    """A timed alone, then B timed alone with the load (if any) started in between."""
    a = compare_latency({"a": models["a"]}, shape, repeats=repeats, rounds=5, warmup=5)["a"]
    for w in workers:
        w.start()
    b = compare_latency({"b": models["b"]}, shape, repeats=repeats, rounds=5, warmup=5)["b"]
    return a.median_ms / b.median_ms


if __name__ == "__main__":
    main()
