"""Cost of the call recorder in the one trace (issue 13, channel semantics).

During the trace, `surgery.graph._CallRecorder` (a TorchFunctionMode) sees every torch call of the model's
forward, to record how views/splits/slices/norms were asked for and to hand out channel widths that remember
where they came from. It adds Python work per op, not per element, so its share is largest at a small input.
This times building the channel graph (`ChannelGraph(model, x)`: the trace plus reading it) with and without
the recorder, interleaved in one process (median of `--repeats`), on the four models of
`benchmarks/prune_speed.py`, and prints the ratio.

    python benchmarks/trace_recorder.py --threads 1 --size 224 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import statistics
import time
import warnings
from pathlib import Path

import torch

import prunekit.surgery.graph as graph


def _models() -> dict:
    spec = importlib.util.spec_from_file_location("prune_speed", Path(__file__).with_name("prune_speed.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODELS


def _build(model: torch.nn.Module, x: torch.Tensor, recorder: bool) -> float:
    saved = graph._CallRecorder
    if not recorder:
        graph._CallRecorder = contextlib.nullcontext  # type: ignore[assignment,misc]
    try:
        start = time.perf_counter()
        graph.ChannelGraph(model, x)
        return time.perf_counter() - start
    finally:
        graph._CallRecorder = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    shape = f"1×3×{args.size}×{args.size}"
    print(f"channel graph build, {shape}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'model':<14}{'without (s)':>12}{'with (s)':>10}{'ratio':>8}")
    for name, make in _models().items():
        model, x = make().eval(), torch.randn(1, 3, args.size, args.size)
        _build(model, x, True)  # warm-up (allocator, lazy imports)
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.repeats):
            for recorder in (False, True) if i % 2 else (True, False):  # ABBA: neither always runs second
                gc.collect()  # the previous graph's garbage is not charged to the next build
                times[recorder].append(_build(model, x, recorder))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:<14}{off:>12.3f}{on:>10.3f}{on / off:>8.2f}")


if __name__ == "__main__":
    main()
