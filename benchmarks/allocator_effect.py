"""What glibc's default allocator does to a latency measurement: the same models timed with it and with the
steady allocator prunekit uses (`measure.allocator.steady_allocator`), each in its own fresh process.

ResNet-56 (option A, random weights: only shapes matter) dense and L1-pruned at uniform ratios 0.3 and 0.5,
deployed form, interleaved (`measure.compare_latency`), `--measurements` times back to back in each
process. Printed per measurement: each model's median ms, the pruned models' latency speed-up over MAC
speed-up, and the minor page faults per forward of the whole measurement.

    OMP_NUM_THREADS=1 python benchmarks/allocator_effect.py --batch 64 --measurements 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, warnings
import torch
warnings.simplefilter("ignore")
mode, batch, threads, measurements, rounds, repeats = sys.argv[1], *map(int, sys.argv[2:])
import prunekit.measure.timing as timing
if mode == "default":
    timing.steady_allocator = lambda: "unchanged"  # time as a plain process would
from prunekit.measure import compare_latency, cost
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.surgery import apply_with_report
torch.manual_seed(0)
dense = create("resnet56").eval()
x = torch.randn(1, 3, 32, 32)
models = {"dense": dense}
for ratio in (0.3, 0.5):
    plan = create_method("l1", rates=repr(ratio)).plan(dense, x)
    models[f"L1 {ratio}"] = apply_with_report(dense, plan, x)[0].eval()
macs = {name: cost(m, (3, 32, 32)).macs for name, m in models.items()}
for _ in range(measurements):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    timed = compare_latency(models, (3, 32, 32), batch_size=batch, threads=threads, warmup=2,
                            repeats=rounds * repeats, rounds=rounds)
    forwards = len(models) * (2 + rounds * (repeats + 1))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / forwards
    ms = {name: r.median_ms for name, r in timed.items()}
    ratio = {n: (ms["dense"] / ms[n]) / (macs["dense"] / macs[n]) for n in models if n != "dense"}
    print(json.dumps({"ms": ms, "ratio": ratio, "faults_per_forward": faults}), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measurements", type=int, default=3, help="back-to-back measurements per process")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4, help="timed forwards per model and round")
    args = parser.parse_args()
    numbers = [args.batch, args.threads, args.measurements, args.rounds, args.repeats]
    for mode in ("default", "steady"):
        command = [sys.executable, "-c", CHILD, mode, *map(str, numbers)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{mode}: child failed\n{done.stderr[-2000:]}")
        print(f"{mode} allocator, batch {args.batch}, {args.threads} thread(s), fresh process:")
        for k, line in enumerate(done.stdout.splitlines(), 1):
            row = json.loads(line)
            times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in row["ms"].items())
            ratios = ", ".join(f"{name} {r:.2f}" for name, r in row["ratio"].items())
            print(
                f"  measurement {k}: {times}; lat×/MAC× {ratios}; "
                f"{row['faults_per_forward']:.0f} minor faults per forward"
            )


if __name__ == "__main__":
    main()
