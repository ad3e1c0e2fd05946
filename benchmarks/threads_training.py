"""Training throughput against the intra-op thread count, side by side in one process (`--threads`).

Trains LeNet-5 on the embedded Fashion-MNIST subset for one epoch per trial with each thread count in
turn, rounds interleaved so machine load hits every count alike, and prints the median epoch time per
count and its ratio to one thread. The default of `prunekit --threads` is the physical core count
(`prunekit.train.threads.physical_cores`); torch's own default is every logical CPU.

    OMP_NUM_THREADS=1 python benchmarks/threads_training.py --rounds 3 --limit 2048
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from prunekit.data import build_loaders
from prunekit.models import create
from prunekit.train import TrainConfig, fit
from prunekit.train.threads import physical_cores


def epoch_time(threads: int, limit: int) -> float:
    torch.set_num_threads(threads)
    train, val, _ = build_loaders("fashion_mnist_mini", 64, limit_train=limit, limit_test=256)
    torch.manual_seed(0)
    model = create("lenet5")
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    started = time.perf_counter()
    fit(model, train, val, cfg, progress=False, device="cpu")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=2048, help="training images per epoch")
    args = parser.parse_args()
    counts = sorted({1, physical_cores(), os.cpu_count() or 1})
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            times[n].append(epoch_time(n, args.limit))
    print(f"physical cores {physical_cores()}, logical CPUs {os.cpu_count()}, {args.limit} images/epoch")
    base = statistics.median(times[1])
    for n in counts:
        med = statistics.median(times[n])
        spread = f"{min(times[n]):.2f}–{max(times[n]):.2f}"
        print(f"threads {n}: median epoch {med:.2f} s (range {spread})  ratio to 1 thread {med / base:.2f}×")


if __name__ == "__main__":
    main()
