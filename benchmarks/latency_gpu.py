"""GPU latency of dense vs pruned ResNet-56 at batch 256 (channels_last, bf16): does round_to matter there?

Issue 14's GPU table. From one randomly initialised ResNet-56 (option A), pruned on the CPU with
`prunekit.prune` (L1):

- ``L1 2x`` / ``L1 4x``: `target_macs=0.5` / `0.25`, any width;
- ``L1 2x r=8`` ... ``L1 4x r=16``: the same budgets with kept widths multiples of 8 or 16.

Each model is BN-folded (`measure.fold_batchnorm`), cast to bf16 and channels_last, and timed on the GPU
with CUDA events, interleaved round by round (A B C ... A B C ...), in two forms: eager (cuDNN autotuned)
and one CUDA-graph replay of the whole forward (no launch overhead: ResNet-56's convs are tiny, so eager
timing is mostly kernel launches). Medians with the spread of the per-round medians; latency speed-up next
to the MAC speed-up.

    PYTHONPATH=src python benchmarks/latency_gpu.py --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.measure import cost, fold_batchnorm
from prunekit.models import create

INPUT_SHAPE = (3, 32, 32)


def variants(seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    dense = create("resnet56").eval()
    calib = torch.randn(2, *INPUT_SHAPE)
    out = {"dense": dense}
    for target, tag in ((0.5, "2x"), (0.25, "4x")):
        out[f"L1 {tag}"] = prunekit.prune(dense, calib, method="l1", target_macs=target)
        for r in (8, 16):
            try:
                out[f"L1 {tag} r={r}"] = prunekit.prune(
                    dense, calib, method="l1", target_macs=target, round_to=r
                )
            except ConfigError as exc:  # r=16 leaves the 16-wide stage whole: 4x is out of reach
                print(f"  L1 {tag} r={r}: {exc}")
    return out


def runner(model: nn.Module, x: torch.Tensor, graph: bool):
    deployed = fold_batchnorm(model).to(x.device, torch.bfloat16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(5):
            deployed(x)
        if not graph:
            return lambda: deployed(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                deployed(x)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = deployed(x)  # kept alive: the graph writes into it on every replay
        # A replay reads the weights and the shortcut's index buffers at the addresses captured: `deployed`
        # must live as long as the graph. Kept only by a local, it was freed when this function returned,
        # the next model's tensors reused its memory, and the replay indexed with whatever landed in the
        # shortcut's `src`/`dst` (the device-side index assert) after convolving with foreign weights.
        g.static_out, g.deployed = static_out, deployed
    return g.replay


def time_all(models: dict[str, nn.Module], x: torch.Tensor, graph: bool, rounds: int, repeats: int):
    runs = {name: runner(m, x, graph) for name, m in models.items()}
    per_round: dict[str, list[float]] = {name: [] for name in runs}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            with torch.no_grad():
                run()
                times = []
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    run()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
            samples[name] += times
            per_round[name].append(statistics.median(times))
    return samples, per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--graph",
        action="store_true",
        help="also time CUDA-graph replays (eager only by default; before the captured model was kept alive, "
        "the replay hit a device-side index assert in the option-A shortcut on torch 2.11 + H200)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    started = time.time()
    models = variants(args.seed)
    macs = {name: cost(m, INPUT_SHAPE).macs for name, m in models.items()}
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}, batch {args.batch}, bf16, channels_last"
    )
    for name, m in models.items():
        widths = sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)})
        print(f"  {name:<12} {macs[name] / 1e6:7.2f} M MACs  widths {widths}")
    print(f"(pruning took {time.time() - started:.1f} s on the CPU)")
    x = torch.randn(args.batch, *INPUT_SHAPE, device="cuda", dtype=torch.bfloat16)
    x = x.to(memory_format=torch.channels_last)
    # cuDNN's autotuner may pick kernels that cannot be captured; the graph form uses fixed algorithms.
    for graph in (False, True) if args.graph else (False,):
        torch.backends.cudnn.benchmark = not graph
        samples, per_round = time_all(models, x, graph, args.rounds, args.repeats)
        dense = statistics.median(samples["dense"])
        print(
            f"\n{'CUDA graph replay' if graph else 'eager (cuDNN autotuned)'}, ms per batch of {args.batch}:"
        )
        head = ("MAC x", "median", "round medians", "latency x", "lat/MAC")
        print(f"  {'model':<12} {head[0]:>6} {head[1]:>8} {head[2]:>15} {head[3]:>9} {head[4]:>8}")
        for name in models:
            med = statistics.median(samples[name])
            mac_x, lat_x = macs["dense"] / macs[name], dense / med
            lo, hi = min(per_round[name]), max(per_round[name])
            print(
                f"  {name:<12} {mac_x:6.2f} {med:8.3f} {lo:7.3f}-{hi:<7.3f} {lat_x:9.2f} {lat_x / mac_x:8.2f}"
            )


if __name__ == "__main__":
    main()
