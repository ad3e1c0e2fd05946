"""HRank rank generation: prunekit's `hrank_scores` vs the original `rank_generation.py`, side by side.

Both rank the same 55 ResNet-56 taps (stem ReLU, relu1/relu2 of every block) on the same synthetic
3x32x32 images, in eval mode without gradients.

- prunekit: one forward per batch with hooks on every tap; each hook ranks all its (B, C) maps with
  one batched call (`feature_map_ranks`) and drops them.
- original (HRank `rank_generation.py`): one full pass over the batches *per tapped layer*, and in the
  hook `torch.matrix_rank(output[i, j]).item()` for every image i and channel j in Python loops, then
  a float running mean (here `torch.linalg.matrix_rank`, the same rule).

The original is timed on `--loop-images` images and scaled linearly to `--images` (its cost is linear
in the images: every image costs the same forwards and the same per-map SVDs); the output says so. The
two are also checked to give identical mean ranks on those images.

    python benchmarks/hrank_ranks.py --images 768 --loop-images 16 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from prunekit.methods.hrank import hrank_scores
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
    start = time.perf_counter()
    ours = hrank_scores(model, images, n_images=args.images, batch_size=args.batch_size)
    sync()
    t_ours = time.perf_counter() - start

    subset = images[: args.loop_images]
    start = time.perf_counter()
    reference = original_ranks(model, subset, taps, args.batch_size)
    sync()
    t_loop = (time.perf_counter() - start) * args.images / args.loop_images

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
    print(f"  speed-up: {t_loop / t_ours:.1f}x")
    print(f"  max |mean rank difference| on the {args.loop_images} shared images: {diff:g}")
    assert len(ours) == len(taps)


if __name__ == "__main__":
    main()
