"""What the engine's checks cost (issue 13): the pruning-equals-masking check next to the one-shot prune.

For each model (random weights): CPU time of
- `trace`: tracing the dependency graph and reading its channel units (`surgery.graph.ChannelGraph`);
- `prune`: a whole ``prunekit.prune(model, x, method="l1", ratio=0.5)`` on a fresh model (trace included);
- `surgery`: `surgery.apply` of that prune's plan without the masking check, and `check`: what the check
  adds (one dense and one pruned forward with biases and BatchNorm shifts neutralised);
- `torch-pruning`: ``MetaPruner(..., MagnitudeImportance(p=1), pruning_ratio=0.5).step()`` on a fresh model.
Each is the median of `--repeats` runs, measured with `time.process_time` (this process's CPU time, so a
loaded machine does not inflate it), one thread, imports warmed up first; the trace, the prune and
Torch-Pruning get a freshly built model per run, the two surgeries one traced model (as inside a prune);
construction and a garbage collection happen before the clock starts.

    python benchmarks/masking_check_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import gc
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


def cpu_seconds(make: Callable[[], nn.Module], run: Callable[[nn.Module], object], repeats: int) -> float:
    """Median CPU seconds of `run(make())`, the construction not timed."""
    times = []
    for _ in range(repeats):
        model = make()
        gc.collect()
        start = time.process_time()
        run(model)
        times.append(time.process_time() - start)
    return statistics.median(times)


def torch_pruning_step(model: nn.Module, x: torch.Tensor) -> None:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=heads
    ).step()


def row(arch: str, x: torch.Tensor, repeats: int) -> tuple[float, float, float, float, float]:
    """CPU seconds of: the trace, the whole prune, the surgery without and with the check, Torch-Pruning."""

    def fresh() -> nn.Module:
        return create(arch).eval()

    model = fresh()
    plan = create_method("l1", 0.5).plan(model, x)  # traces `model` once; the surgeries below reuse it

    def surgery(check: bool) -> float:
        return cpu_seconds(
            lambda: model, lambda m: _apply(m, plan, x, check_masking=check, report=False), repeats
        )

    return (
        cpu_seconds(fresh, lambda m: ChannelGraph(m, x), repeats),
        cpu_seconds(fresh, lambda m: prunekit.prune(m, x, method="l1", ratio=0.5), repeats),
        surgery(False),
        surgery(True),
        cpu_seconds(fresh, lambda m: torch_pruning_step(m, x), repeats),
    )


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
        trace, prune, bare, full, theirs = row(arch, x, args.repeats)
        check = full - bare
        print(
            f"| {arch} | {'x'.join(map(str, shape[1:]))} | {trace:.3f} | {prune:.3f} | {bare:.3f} "
            f"| {check:.3f} | {check / prune:.2f} | {theirs:.3f} | {prune / theirs:.2f} |"
        )


if __name__ == "__main__":
    main()
