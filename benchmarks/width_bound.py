"""How much latency can any choice of widths buy at a MAC budget? The best allocation of a CIFAR ResNet.

Issue 14 asks for a latency speed-up of at least 0.9 (batch 64) and 0.8 (batch 1) times the MAC speed-up at
≈2× and ≈4× fewer MACs. This script asks whether any width allocation can give that on this machine,
whatever method picks the channels. Every allocation of widths that are multiples of ``--multiple`` is
searched exactly:

- each stage has one residual width (the shortcut ties the stage's blocks together), and each block its own
  inner width (the output of its first conv);
- each conv's latency is read from prunekit's lookup table (`measure.latency_table`: the layer timed alone in
  the deployed form, cached per machine, batch and threads), a model's latency is the sum over its layers;
- the (MACs, latency) Pareto front of every stage is enumerated for each pair of residual widths (blocks
  after the first are interchangeable, so they are multisets of inner widths), and the fronts are added
  stage by stage.

The table leaves out ReLUs, additions, shortcuts and the per-call overhead a whole model shares, so a
prediction is not a measurement: the best allocation found for each budget is built (random weights: only
the shapes matter) and timed against the dense model, interleaved, in the deployed form
(`measure.compare_latency`), beside uniform widths (8/16/32, 8/24/56, 8/32/32) and, for what depth buys
instead of width, the full-width network with fewer blocks per stage (``depth k``: ResNet-(6k+2), the
latency a model with whole blocks removed would have, give or take the removed blocks' additions).

    OMP_NUM_THREADS=1 python benchmarks/width_bound.py --batch-sizes 1,64
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunekit.measure import compare_latency, cost
from prunekit.measure.latency_table import LatencyTable, LayerShape

DENSE_WIDTHS = (16, 32, 64)
INPUT_HW = 32
CLASSES = 10
#: MAC fractions searched and the band around each (issue 14: "≈2×" and "≈4×"; budgets are met within 2 %).
BUDGETS = (0.5, 0.25)
BAND = 0.02


@dataclass(frozen=True)
class Allocation:
    residual: tuple[int, int, int]  # per stage
    inner: tuple[tuple[int, ...], ...]  # per stage, per block

    def describe(self) -> str:
        def run(widths: tuple[int, ...]) -> str:
            return "/".join(
                f"{w}×{n}" for w, n in sorted(((w, widths.count(w)) for w in set(widths)), reverse=True)
            )

        return " | ".join(f"r{r} m[{run(m)}]" for r, m in zip(self.residual, self.inner, strict=True))


def conv(cin: int, cout: int, stride: int, in_hw: int) -> LayerShape:
    return LayerShape(cin, cout, (3, 3), (stride, stride), (1, 1), (1, 1), 1, (in_hw, in_hw))


def conv_macs(shape: LayerShape) -> int:
    return shape.macs()


#: Every conv's MACs of a CIFAR ResNet with widths multiples of 8 are a multiple of this (a 3×3 conv at 8×8
#: with 8 inputs and 8 outputs); MACs are indexed in these units so that stages add exactly.
MAC_UNIT = 9 * 8 * 8 * 64


class Search:
    """Exact search over aligned widths of a CIFAR ResNet with `blocks` blocks per stage: for every MAC
    count (in MAC_UNIT steps) the least predicted latency, with the allocation that reaches it."""

    def __init__(self, table: LatencyTable, blocks: int, multiple: int) -> None:
        if multiple % 8:
            raise SystemExit("--multiple must be a multiple of 8 (MACs are indexed in 8×8-channel units)")
        self.table, self.blocks = table, blocks
        self.options = [tuple(range(multiple, w + 1, multiple)) for w in DENSE_WIDTHS]
        self.size = 9 * 3 * 16 * 1024 + 3 * 2 * blocks * 9 * 64 * 64 * 64  # more than the dense MACs
        self.size = self.size // MAC_UNIT + 1

    def cost(self, shape: LayerShape) -> tuple[int, float]:
        return conv_macs(shape), self.table.lookup(shape)

    def block(self, stage: int, cin: int, r: int, m: int, first: bool) -> tuple[int, float]:
        hw = INPUT_HW >> stage
        stride = 2 if first and stage > 0 else 1
        a = self.cost(conv(cin, m, stride, hw * stride))
        b = self.cost(conv(m, r, 1, hw))
        return a[0] + b[0], a[1] + b[1]

    def stage_front(self, stage: int, r_prev: int, r: int) -> tuple[np.ndarray, dict[int, tuple[int, ...]]]:
        """Least latency per MAC count of one stage, and the inner widths (first block, then the rest)."""
        opts = self.options[stage]
        first = {m: self.block(stage, r_prev, r, m, True) for m in opts}
        rest = {m: self.block(stage, r, r, m, False) for m in opts}
        best = np.full(self.size, np.inf)
        inner: dict[int, tuple[int, ...]] = {}
        for m0 in opts:
            for others in itertools.combinations_with_replacement(opts, self.blocks - 1):
                macs = first[m0][0] + sum(rest[m][0] for m in others)
                lat = first[m0][1] + sum(rest[m][1] for m in others)
                k, left = divmod(macs, MAC_UNIT)
                assert not left
                if lat < best[k]:
                    best[k], inner[k] = lat, (m0, *others)
        return best, inner

    def best_per_macs(self) -> dict[tuple[int, int, int], tuple[np.ndarray, list]]:
        """For each residual widths (r1, r2, r3): least predicted µs per MAC count (stem and the three
        stages; the linear head is added by the caller), and how to rebuild the allocation."""
        fronts = {}
        for s in range(3):
            previous = self.options[s - 1] if s else self.options[0]
            for r_prev, r in itertools.product(previous, self.options[s]):
                if s == 0 and r_prev != r:
                    continue
                fronts[(s, r_prev, r)] = self.stage_front(s, r_prev, r)
        self.table.save()
        out = {}
        for r1, r2, r3 in itertools.product(*self.options):
            stem_macs, stem_us = self.cost(conv(3, r1, 1, INPUT_HW))
            lat = np.full(self.size, np.inf)
            lat[stem_macs // MAC_UNIT] = stem_us
            trail = []
            for s, (r_prev, r) in enumerate(((r1, r1), (r1, r2), (r2, r3))):
                stage_lat, _ = fronts[(s, r_prev, r)]
                lat, came_from = min_plus(lat, stage_lat)
                trail.append((came_from, fronts[(s, r_prev, r)][1]))
            out[(r1, r2, r3)] = (lat, trail)
        return out

    def allocation(self, residual: tuple[int, int, int], trail: list, k: int) -> Allocation:
        inner = []
        for came_from, stage_inner in reversed(trail):
            before = int(came_from[k])
            inner.append(stage_inner[k - before])
            k = before
        return Allocation(residual, tuple(reversed(inner)))


def min_plus(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """c[k] = min over i of a[i] + b[k - i], and the i that gives it."""
    c = np.full_like(a, np.inf)
    arg = np.zeros(len(a), dtype=np.int64)
    b_at = np.flatnonzero(np.isfinite(b))
    for i in np.flatnonzero(np.isfinite(a)):
        ks = i + b_at
        keep = ks < len(c)
        ks, vals = ks[keep], a[i] + b[b_at[keep]]
        better = vals < c[ks]
        c[ks[better]] = vals[better]
        arg[ks[better]] = i
    return c, arg


class Shortcut(nn.Module):
    """Option A's parameter-free shortcut for any widths: subsample, then zero-pad or drop channels (a
    pruned model may keep fewer residual channels in a later stage than in an earlier one)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if self.cout <= self.cin:
            return x[:, : self.cout]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))


class Block(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        same = stride == 1 and cin == cout
        self.shortcut: nn.Module = nn.Identity() if same else Shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Net(nn.Module):
    """A CIFAR ResNet (option A) with any residual width per stage and inner width per block."""

    def __init__(self, allocation: Allocation) -> None:
        super().__init__()
        r1 = allocation.residual[0]
        self.conv = nn.Conv2d(3, r1, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(r1)
        blocks, cin = [], r1
        for s, (r, inner) in enumerate(zip(allocation.residual, allocation.inner, strict=True)):
            for j, m in enumerate(inner):
                blocks.append(Block(cin, m, r, 2 if s and not j else 1))
                cin = r
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def uniform(widths: tuple[int, int, int], blocks: int) -> Allocation:
    return Allocation(widths, tuple((w,) * blocks for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=56, help="6n+2 (56: ResNet-56)")
    parser.add_argument("--multiple", type=int, default=8, help="widths are multiples of this")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model and batch size")
    args = parser.parse_args()
    if (args.depth - 2) % 6 or args.depth < 8:
        parser.error("--depth must be 6n+2 with n >= 1")
    blocks = (args.depth - 2) // 6
    torch.set_num_threads(args.threads)
    dense_alloc = uniform(DENSE_WIDTHS, blocks)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        table = LatencyTable(batch, args.threads)
        search = Search(table, blocks, args.multiple)
        per_residual = search.best_per_macs()
        for cin, cout in ((8, 8), (8, 64), (64, 64)):  # why narrow layers do not pay (the table's numbers)
            macs, us = search.cost(conv(cin, cout, 1, 8))
            rate = macs * batch / us / 1e3
            print(f"  table: 3x3 conv {cin}->{cout} at 8x8: {us:.1f} µs, {rate:.1f} GMAC/s")

        def predicted(alloc: Allocation, search: Search = search) -> tuple[int, float]:
            """(MACs, table µs) of an allocation."""
            macs = cost(Net(alloc).eval(), (3, INPUT_HW, INPUT_HW)).macs
            return macs, sum(search.cost(s)[1] for s in _shapes(alloc))

        dense_macs, dense_us = predicted(dense_alloc)
        print(f"\nbatch {batch}, {args.threads} thread(s): {len(per_residual)} residual-width choices "
              f"searched; {table.measured} layer shapes timed now, the rest from the cache")  # fmt: skip
        models = {"dense": (dense_alloc, dense_macs, dense_us)}
        for fraction in BUDGETS:
            lo, hi = dense_macs * fraction * (1 - BAND), dense_macs * fraction * (1 + BAND)
            best = None  # (ratio, macs, µs, allocation)
            for residual, (lat, trail) in per_residual.items():
                fc_macs, fc_us = residual[2] * CLASSES, search.table.lookup(LayerShape(residual[2], CLASSES))
                for k in np.flatnonzero(np.isfinite(lat)):
                    macs, us = int(k) * MAC_UNIT + fc_macs, float(lat[k]) + fc_us
                    if lo <= macs <= hi:
                        ratio = (dense_us / us) / (dense_macs / macs)
                        if best is None or ratio > best[0]:
                            best = (ratio, macs, us, search.allocation(residual, trail, int(k)))
            if best is None:
                print(f"  MACs {fraction:g} ± {BAND:.0%}: no aligned allocation")
                continue
            ratio, macs, us, alloc = best
            rebuilt = predicted(alloc)
            assert rebuilt[0] == macs and abs(rebuilt[1] - us) < 1e-6 * us, "the allocation rebuilt differs"
            print(f"  MACs {fraction:g} ± {BAND:.0%}: best predicted lat×/MAC× {ratio:.3f} (MAC× "
                  f"{dense_macs / macs:.2f}, lat× {dense_us / us:.2f}): {alloc.describe()}")  # fmt: skip
            models[f"best {round(1 / fraction)}x"] = (alloc, macs, us)
        for widths in ((8, 16, 32), (8, 24, 56), (8, 32, 32)):
            alloc = uniform(widths, blocks)
            models["/".join(map(str, widths))] = (alloc, *predicted(alloc))
        for fraction in BUDGETS:
            k = max(1, round(blocks * fraction))
            alloc = uniform(DENSE_WIDTHS, k)
            models[f"depth {k}"] = (alloc, *predicted(alloc))
        torch.manual_seed(0)
        nets = {name: Net(alloc).eval() for name, (alloc, _, _) in models.items()}
        timed = compare_latency(
            nets, (3, INPUT_HW, INPUT_HW), batch_size=batch, threads=args.threads, warmup=3,
            repeats=args.repeats * args.rounds, rounds=args.rounds,
        )  # fmt: skip
        dense_ms = timed["dense"].median_ms
        real_dense_macs = cost(nets["dense"], (3, INPUT_HW, INPUT_HW)).macs
        print(f"  measured, interleaved ({args.rounds} rounds × {args.repeats}), deployed form:")
        header = ("MAC×", "pred lat×", "meas lat×", "pred ratio", "meas ratio")
        print(f"  {'model':<10} " + " ".join(f"{h:>10}" for h in header))
        for name, (_, macs, us) in models.items():
            mac_x = real_dense_macs / macs
            pred, meas = dense_us / us, dense_ms / timed[name].median_ms
            cells = (f"{mac_x:.2f}", f"{pred:.2f}", f"{meas:.2f}", f"{pred / mac_x:.3f}")
            print(f"  {name:<10} " + " ".join(f"{c:>10}" for c in cells) + f" {meas / mac_x:10.3f}")


def _shapes(alloc: Allocation) -> list[LayerShape]:
    shapes = [conv(3, alloc.residual[0], 1, INPUT_HW)]
    cin = alloc.residual[0]
    for s, (r, inner) in enumerate(zip(alloc.residual, alloc.inner, strict=True)):
        hw = INPUT_HW >> s
        for j, m in enumerate(inner):
            stride = 2 if s and not j else 1
            shapes += [conv(cin, m, stride, hw * stride), conv(m, r, 1, hw)]
            cin = r
    return [*shapes, LayerShape(cin, CLASSES)]


if __name__ == "__main__":
    main()
