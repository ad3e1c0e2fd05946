"""HRank rank generation: prunekit's `hrank_scores` vs the original `rank_generation.py`, side by side.

Both rank the same 55 ResNet-56 taps (stem ReLU, relu1/relu2 of every block) on the same synthetic
3x32x32 images, in eval mode without gradients.

- prunekit: one forward per batch with hooks on every tap; each hook ranks all its (B, C) maps with
  one batched call (`feature_map_ranks`: Cholesky certificates on Gram matrices, eigenvalues for the
  rest, chunks spread over the threads) and drops them.
- original (HRank `rank_generation.py`): one full pass over the batches *per tapped layer*, and in the
  hook `torch.matrix_rank(output[i, j]).item()` for every image i and channel j in Python loops, then
  a float running mean (here `torch.linalg.matrix_rank`, the same rule).

The original is timed on `--loop-images` images and scaled linearly to `--images` (its cost is linear
in the images: every image costs the same forwards and the same per-map SVDs); the output says so. The
two are also checked to give identical mean ranks on those images. Wall-clock and process CPU seconds are
both printed (on a loaded machine only the CPU seconds mean anything), then where prunekit's time goes:
the forward, and each step of `feature_map_ranks` with the share of maps it decides.

    python benchmarks/hrank_ranks.py --images 768 --loop-images 16 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from prunekit.methods.feature_pass import feature_pass
from prunekit.methods.hrank import criterion, hrank_scores
from prunekit.methods.hrank.layouts import Tap, layout_for
from prunekit.models import create


def original_ranks(model: nn.Module, images: Tensor, taps: list[Tap], batch_size: int) -> dict[str, Tensor]:
    """HRank's rank_generation.py: a separate pass per layer, a Python loop over every map."""
    modules = dict(model.named_modules())
    scores: dict[str, Tensor] = {}
    for tap in taps:
        state = {"mean": torch.zeros(()), "total": 0}

        def hook(_module: nn.Module, _inputs: object, output: Tensor, state: dict = state) -> None:
            a, b = output.shape[0], output.shape[1]
            c = torch.tensor(
                [torch.linalg.matrix_rank(output[i, j, :, :]).item() for i in range(a) for j in range(b)]
            )
            c = c.view(a, -1).float().sum(0)
            state["mean"] = (state["mean"] * state["total"] + c) / (state["total"] + a)
            state["total"] += a

        handle = modules[tap.module].register_forward_hook(hook)
        with torch.no_grad():
            for batch in images.split(batch_size):
                model(batch)
        handle.remove()
        scores[tap.conv] = state["mean"]
    return scores


def where_time_goes(model: nn.Module, images: Tensor, taps: list[Tap], batch_size: int) -> dict[str, float]:
    """CPU seconds of the forward alone and of each step of `feature_map_ranks` on the same maps (the same
    steps, timed one by one), and how many maps each step decides: all-zero, the Cholesky certificate on
    the shorter side's Gram, the certificate on the other side's, eigenvalues, SVD fallback."""
    maps: list[Tensor] = []
    feature_pass(model, images, taps, lambda _c, m: maps.append(m.detach().float().flatten(0, 1)),
                 n_images=len(images), batch_size=batch_size)  # fmt: skip
    out = dict.fromkeys(("zero", "certified", "certified, other side", "eigen", "svd"), 0)
    steps = ("forward", "gram+cholesky", "other side", "eigen", "svd fallback", "matrix_rank everywhere")
    cpu = dict.fromkeys(steps, 0.0)
    start = time.process_time()
    with torch.no_grad():
        for batch in images.split(batch_size):
            model(batch)
    cpu["forward"] = time.process_time() - start
    for stack in maps:
        h, w = stack.shape[1:]
        first, second = ("columns", "rows") if w <= h else ("rows", "columns")
        with criterion._rank_workers(stack.device) as workers:
            start = time.process_time()
            ranks, gram = criterion._certified(stack, first, workers)
            cpu["gram+cholesky"] += time.process_time() - start
            out["zero"] += int((ranks == 0).sum())
            out["certified"] += int((ranks > 0).sum())
            start = time.process_time()
            undecided = (ranks < 0).nonzero().squeeze(1)
            nonzero = stack[undecided].ne(0)
            rows, cols = nonzero.any(2).sum(1), nonzero.any(1).sum(1)
            retried = undecided[rows < cols if first == "columns" else cols < rows]
            ranks[retried] = criterion._certified(stack[retried], second, workers)[0]
            cpu["other side"] += time.process_time() - start
            out["certified, other side"] += int((ranks[retried] >= 0).sum())
            undecided = (ranks < 0).nonzero().squeeze(1)
            start = time.process_time()
            _, unsure = criterion._eigen_ranks_in_chunks(gram[undecided], h, w, workers)
            cpu["eigen"] += time.process_time() - start
            start = time.process_time()
            torch.linalg.matrix_rank(stack[undecided[unsure]])
            cpu["svd fallback"] += time.process_time() - start
        start = time.process_time()
        torch.linalg.matrix_rank(stack)
        cpu["matrix_rank everywhere"] += time.process_time() - start
        out["eigen"] += int((~unsure).sum())
        out["svd"] += int(unsure.sum())
    total = sum(out.values())
    shares = {f"maps by {k} %": 100 * v / total for k, v in out.items()}
    return {**{f"{k} CPU s": v for k, v in cpu.items()}, **shares}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loop-images", type=int, default=16, help="images the original loop is timed on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create(args.model).to(device).eval()
    # Synthetic CIFAR-like inputs, normalised: random weights and images give post-ReLU maps of the
    # same shapes and cost as real ones.
    images = torch.randn(args.images, 3, 32, 32, device=device)
    taps = list(layout_for(model).taps)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    hrank_scores(model, images[: args.batch_size], n_images=args.batch_size)  # warm-up
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    ours = hrank_scores(model, images, n_images=args.images, batch_size=args.batch_size)
    sync()
    t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu

    subset = images[: args.loop_images]
    start, cpu = time.perf_counter(), time.process_time()
    reference = original_ranks(model, subset, taps, args.batch_size)
    sync()
    t_loop = (time.perf_counter() - start) * args.images / args.loop_images
    c_loop = (time.process_time() - cpu) * args.images / args.loop_images

    check = hrank_scores(model, subset, n_images=args.loop_images, batch_size=args.batch_size)
    diff = max((check[c] - reference[c].cpu()).abs().max().item() for c in reference)
    print(
        f"{args.model}: {len(taps)} ranked convs, {args.images} images, batch {args.batch_size}, "
        f"{args.threads} threads, device {device}"
    )
    print(f"  prunekit hrank_scores (batched, one pass):      {t_ours:8.2f} s")
    print(
        f"  original (pass per layer, per-map Python loop): {t_loop:8.2f} s "
        f"(timed on {args.loop_images} images, scaled x{args.images / args.loop_images:g})"
    )
    print(f"  speed-up: {t_loop / t_ours:.1f}x (wall clock)")
    print(
        f"  CPU seconds of this process (robust to other load): prunekit {c_ours:.2f} s, original "
        f"{c_loop:.2f} s (scaled), speed-up {c_loop / c_ours:.1f}x"
    )
    print(f"  max |mean rank difference| on the {args.loop_images} shared images: {diff:g}")
    print(f"  where prunekit's time goes (first {args.batch_size} images, CPU seconds / share of maps):")
    for key, value in where_time_goes(model, images[: args.batch_size], taps, args.batch_size).items():
        print(f"    {key:28} {value:8.2f}")
    assert len(ours) == len(taps)


if __name__ == "__main__":
    main()
