"""What the engine's checks cost (issue 13): the pruning-equals-masking check next to the one-shot prune.

For each model (random weights): CPU time of
- `trace`: tracing the dependency graph and reading its channel units (`surgery.graph.ChannelGraph`);
- `prune`: a whole ``prunekit.prune(model, x, method="l1", ratio=0.5)`` on a fresh model (trace included);
- `surgery`: `surgery.apply` of that prune's plan without the masking check, and `check`: what the check
  adds (one dense and one pruned forward with biases and BatchNorm shifts neutralised);
- `torch-pruning`: ``MetaPruner(..., MagnitudeImportance(p=1), pruning_ratio=0.5).step()`` on a fresh model.
Each is the median of `--repeats` runs, measured with `time.process_time` (this process's CPU time, so a
loaded machine does not inflate it), one thread, imports warmed up first.

    python benchmarks/masking_check_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

import prunekit
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.surgery.channels import _apply
from prunekit.surgery.graph import ChannelGraph

MODELS = [("resnet50", (1, 3, 224, 224)), ("resnet56", (1, 3, 32, 32)), ("densenet40", (1, 3, 32, 32)),
          ("vgg16_bn", (1, 3, 32, 32))]  # fmt: skip


def cpu_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return statistics.median(times)


def torch_pruning_step(arch: str, x: torch.Tensor) -> None:
    model = create(arch).eval()
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=heads
    ).step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prunekit.prune(create("lenet5"), torch.randn(1, 1, 28, 28), method="l1", ratio=0.5)  # warm imports
    print("CPU seconds, median of", args.repeats, "| one L1 prune at ratio 0.5, 1 thread")
    print("| model | input | trace | prune | surgery | check | check / prune | torch-pruning | prune / TP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, shape in MODELS:
        x = torch.randn(*shape)
        trace = cpu_seconds(lambda: ChannelGraph(create(arch), x), args.repeats)  # noqa: B023
        prune = cpu_seconds(lambda: prunekit.prune(create(arch), x, method="l1", ratio=0.5), args.repeats)  # noqa: B023
        model = create(arch)
        plan = create_method("l1", 0.5).plan(model, x)
        bare = cpu_seconds(lambda: _apply(model, plan, x, check_masking=False, report=False), args.repeats)  # noqa: B023
        full = cpu_seconds(lambda: _apply(model, plan, x, check_masking=True, report=False), args.repeats)  # noqa: B023
        theirs = cpu_seconds(lambda: torch_pruning_step(arch, x), args.repeats)  # noqa: B023
        check = full - bare
        print(
            f"| {arch} | {'x'.join(map(str, shape[1:]))} | {trace:.3f} | {prune:.3f} | {bare:.3f} "
            f"| {check:.3f} | {check / prune:.2f} | {theirs:.3f} | {prune / theirs:.2f} |"
        )


if __name__ == "__main__":
    main()
