"""Wall time of one L1 prune at ratio 0.5: prunekit vs Torch-Pruning, side by side (issue 13).

Four ImageNet-style models at 224×224, random weights: the zoo's ResNet-50 and small torchvision-style
definitions of MobileNetV2 (inverted residuals, depthwise convs), DenseNet-121 (concatenations) and
ShuffleNetV2 ×1.0 (``chunk`` splits and channel shuffles), written here because torchvision is not a
dependency. Each (tool, model) runs in its own process with a wall-clock limit, so a graph analysis that
never ends is reported as "did not finish" instead of hanging the run.

- prunekit: ``prunekit.prune(model, x, method="l1", rates=0.5)`` — tracing, coupling groups, the plan,
  the surgery and prunekit's checks after it (everything a user waits for);
- Torch-Pruning: ``MetaPruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5,
  ignored_layers=[classifier]).step()`` — its tracing, grouping and pruning (no checks).

Model construction and imports are outside the timed region, and the garbage they leave is collected
before it starts. Each timed call runs in a fresh process, `--repeats` processes per (tool, model), the two
tools interleaved (ABBA); the table gives the median (min–max) wall seconds and the ratio of prunekit's
median to Torch-Pruning's (target: at most 1.5), and the same ratio in CPU seconds (less sensitive to a
shared machine's load). Torch-Pruning is called as its documentation shows, with the example tensor itself: it
first tries ``model(*example)``, i.e. an unbatched forward at batch one, before the real one.

    python benchmarks/prune_speed.py --threads 1 --timeout 300 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TARGET = 1.5  # prunekit time / Torch-Pruning time


# ---------------------------------------------------------------- MobileNetV2 (torchvision layout)


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn_act(cin, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ---------------------------------------------------------------- DenseNet-121 (torchvision layout)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, out], 1)


class DenseNet121(nn.Module):
    def __init__(
        self, num_classes: int = 1000, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        ]  # fmt: skip
        c = 64
        for b, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if b < len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ---------------------------------------------------------------- ShuffleNetV2 x1.0 (torchvision layout)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        branch = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(),
            )  # fmt: skip
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 24
        for repeats, cout in ((4, 116), (8, 232), (4, 464)):
            stages.append(
                nn.Sequential(
                    *(ShuffleUnit(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(repeats))
                )
            )
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(nn.Conv2d(cin, 1024, 1, bias=False), nn.BatchNorm2d(1024), nn.ReLU())
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean((2, 3)))


def resnet50() -> nn.Module:
    from prunekit.models import create

    return create("resnet50")


MODELS: dict[str, Callable[[], nn.Module]] = {
    "ResNet-50": resnet50,
    "MobileNetV2": MobileNetV2,
    "DenseNet-121": DenseNet121,
    "ShuffleNetV2": ShuffleNetV2,
}


# ---------------------------------------------------------------- one timed prune per process

Result = tuple[float, float, float]  # wall seconds, CPU seconds, fraction of params kept


def _classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _prune(tool: str, model: nn.Module, x: Tensor) -> nn.Module:
    if tool == "prunekit":
        import prunekit

        return prunekit.prune(model, x, method="l1", rates=0.5)
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=[_classifier(model)],
    )  # fmt: skip
    pruner.step()
    return model


def _measure(tool: str, name: str, size: int, threads: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    model = MODELS[name]().eval()
    x = torch.randn(1, 3, size, size)
    dense = sum(p.numel() for p in model.parameters())
    # Imports are not timed: `prunekit.prune` loads the pipeline (and its report plots) on first access.
    if tool == "prunekit":
        import prunekit

        assert callable(prunekit.prune)
    else:
        import torch_pruning  # noqa: F401
    # The garbage of the imports and the model's construction is collected before the clock starts (as
    # `timeit` keeps the collector out of its timings): otherwise whichever tool's allocations trigger the
    # full collection pays for scanning every object the imports made (~0.08 s on this machine).
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        pruned = _prune(tool, model, x)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        with torch.no_grad():
            pruned.eval()(x)
    except Exception as exc:  # reported in the table: which tool fails on which model, and how
        queue.put(f"failed: {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}")
        return
    queue.put((seconds, cpu_seconds, sum(p.numel() for p in pruned.parameters()) / dense))


def measure(tool: str, name: str, size: int, threads: int, timeout: float) -> Result | str:
    """(wall s, CPU s, fraction of params kept) of one prune in a fresh process, or why there is none
    ("did not finish", "failed")."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(tool, name, size, threads, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return f"did not finish in {timeout:g} s"
    if queue.empty():
        return f"failed (exit code {proc.exitcode})"
    return queue.get()


TOOLS = ("prunekit", "torch-pruning")


def run(
    names: list[str], repeats: int, size: int, threads: int, timeout: float
) -> dict[str, dict[str, list]]:
    """Every (model, tool) `repeats` times, each in a fresh process, the tools interleaved (pk, TP, TP, pk,
    ...) so that a change of the machine's load hits both. A tool that fails or times out on a model is not
    run on it again (its failure is deterministic; a timeout would cost `timeout` per repeat)."""
    results: dict[str, dict[str, list]] = {name: {tool: [] for tool in TOOLS} for name in names}
    for name in names:
        for repeat in range(repeats):
            for tool in TOOLS if repeat % 2 == 0 else TOOLS[::-1]:  # ABBA: neither tool always goes first
                done = results[name][tool]
                if done and isinstance(done[-1], str):
                    continue
                done.append(measure(tool, name, size, threads, timeout))
                shown = (
                    done[-1]
                    if isinstance(done[-1], str)
                    else f"{done[-1][0]:.3f} s ({done[-1][1]:.3f} s CPU)"
                )
                print(f"  {name} #{repeat + 1} {tool}: {shown}", flush=True)
    return results


def _cell(runs: list) -> str:
    times = [r[0] for r in runs if isinstance(r, tuple)]
    if len(times) < len(runs) or not times:
        return next(r for r in runs if isinstance(r, str))
    return f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f})"


def _median(runs: list, field: int) -> float | None:
    values = [r[field] for r in runs if isinstance(r, tuple)]
    return statistics.median(values) if values and len(values) == len(runs) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per (tool, model) process")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per (tool, model)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of the models")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",")]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if args.repeats < 1 or args.timeout <= 0 or args.threads < 1 or args.size < 32:
        parser.error("--repeats and --threads must be >= 1, --timeout > 0 and --size >= 32")
    print(f"one L1 prune at ratio 0.5, input 1x3x{args.size}x{args.size}, {args.threads} thread(s), "
          f"{args.repeats} fresh process(es) per (tool, model), limit {args.timeout:g} s each; "
          f"torch {torch.__version__}")  # fmt: skip
    results = run(names, args.repeats, args.size, args.threads, args.timeout)
    print()
    print("wall seconds: median (min–max) of the repeats; ratios are prunekit's median over Torch-Pruning's")
    header = f"ratio (target <= {TARGET:g}) | CPU ratio | params kept pk / TP"
    print(f"| model | prunekit s | Torch-Pruning s | {header} |")
    print("|---|---|---|---|---|---|")
    for name in names:
        pk, tp_ = results[name]["prunekit"], results[name]["torch-pruning"]
        ratios = []
        for field in (0, 1):
            a, b = _median(pk, field), _median(tp_, field)
            ratios.append(f"{a / b:.2f}" if a is not None and b is not None else "-")
        kept = "/".join(f"{r[0][2]:.3f}" if isinstance(r[0], tuple) else "-" for r in (pk, tp_))
        print(f"| {name} | {_cell(pk)} | {_cell(tp_)} | {ratios[0]} | {ratios[1]} | {kept} |")


if __name__ == "__main__":
    main()
