"""Redundancy-graph similarity construction: prunekit's vectorised pass vs the original per-pair loop.

Both build the (C, C) hash similarity of every conv of ResNet-56 (55 convs, raw conv outputs) on the same
images, BatchNorm on batch statistics, one forward:

- prunekit: `RedundancyGraph.evidence` — the shared calibration pass hashes each layer's maps inside its
  forward hook (one batched DCT, two matrix products) and keeps only the Hamming sums;
- original (`utils/algorithm.py` of lijiang99/redundancy-graph-decomposition, code version 2): store every
  conv's maps, hash each map on its own (DCT of rows then columns, per image and channel), then for every
  pair i < j loop over the images summing ``(h_i ^ h_j)``. Its DCT is scipy's; here the same unnormalised
  DCT-II as a matrix product per map, in numpy.

Timed twice: the construction alone from stored maps (what the ratio target is about), and end to end
with the forward pass (which both need, and which bounds the end-to-end ratio). The loop is timed on
`--loop-images` images and scaled linearly to `--images` (every image costs the same
hashes and pair sums); the output says so. The two similarities are checked to agree exactly on those
images. Times are CPU seconds of this process (`time.process_time`), so other load on a shared machine does
not inflate them; with one thread they equal wall time on an idle machine.

    python benchmarks/redundancy_graph_similarity.py --images 100 --loop-images 10 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.methods import create_method
from prunekit.methods.feature_pass import feature_pass
from prunekit.methods.redundancy_graph import HammingAccumulator, phash
from prunekit.models import create, feature_taps


def dct_matrix(n: int) -> np.ndarray:
    k, pos = np.arange(n)[:, None], np.arange(n)[None, :]
    return 2 * np.cos(math.pi * k * (2 * pos + 1) / (2 * n))


def conv_outputs(model: nn.Module, images: Tensor) -> dict[str, np.ndarray]:
    """Every conv's raw output on `images`, BN on batch statistics (the original's extraction)."""
    blobs: dict[str, np.ndarray] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: blobs.__setitem__(names[mod], out.numpy().copy()))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    training = model.training
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()  # the original never calls eval(); running stats are restored below
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(images)
    model.load_state_dict(state)
    model.train(training)
    for h in hooks:
        h.remove()
    return blobs


def original_similarity(blobs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original: one hash per stored map, then a Python loop over pairs and images."""
    result = {}
    for name, blob in blobs.items():
        n_img, filters, height, width = blob.shape
        k = min(8, height)
        rows, cols = dct_matrix(height), dct_matrix(width)
        hashes = np.zeros([n_img, filters, k, k], dtype=int)
        for t in range(n_img):
            for i in range(filters):
                block = (rows @ blob[t, i].astype(np.float64) @ cols.T)[:k, :k]
                hashes[t, i] = (block >= block.mean()).astype(int)
        sim = np.zeros([filters, filters])
        for i in range(filters):
            for j in range(i + 1, filters):
                distance = 0
                for t in range(n_img):
                    distance += np.sum(hashes[t, i] ^ hashes[t, j])
                sim[i][j] = 1 - distance / (k * k * n_img)
        result[name] = sim
    return result


def vectorised_similarity(blobs: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """prunekit's construction on the same stored maps: one batched hash and one product per layer."""
    result = {}
    for name, blob in blobs.items():
        acc = HammingAccumulator()
        acc.add(phash(torch.from_numpy(blob)))
        result[name] = acc.similarity()
    return result


def ours(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Every conv's similarity through the shared calibration pass: maps hashed inside the hooks."""
    taps = feature_taps(model, "conv") or ()
    acc = {t.conv: HammingAccumulator() for t in taps}

    def reduce(convs: tuple[str, ...], maps: Tensor) -> None:
        bits = phash(maps)
        for conv in convs:
            acc[conv].add(bits)

    feature_pass(model, images, taps, reduce, n_images=len(images), batch_size=len(images), batchnorm="batch")
    return {conv: a.similarity() for conv, a in acc.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--loop-images", type=int, default=10, help="images the original loop is timed on")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.model).eval()
    images = torch.randn(args.images, 3, 32, 32)
    create_method("redundancy_graph", n_images=8).evidence(model, images[:8])  # warm-up

    start = time.process_time()
    method = create_method("redundancy_graph", n_images=args.images)
    method.evidence(model, images)  # what a run computes: one graph per coupling group's leader
    t_method = time.process_time() - start
    start = time.process_time()
    ours(model, images)
    t_ours = time.process_time() - start

    subset = images[: args.loop_images]
    start = time.process_time()
    blobs = conv_outputs(model, subset)
    t_loop_forward = (time.process_time() - start) * args.images / args.loop_images
    start = time.process_time()
    reference = original_similarity(blobs)
    t_loop = (time.process_time() - start) * args.images / args.loop_images

    all_blobs = conv_outputs(model, images)
    start = time.process_time()
    vectorised_similarity(all_blobs)
    t_vec = time.process_time() - start

    check = vectorised_similarity(blobs)
    worst = max(float(np.abs(np.triu(check[c].numpy(), 1) - reference[c]).max()) for c in reference)
    scaled = f"(timed on {args.loop_images} images, scaled x{args.images / args.loop_images:g})"
    print(
        f"{args.model}: {len(reference)} convs, {args.images} images (3x32x32), BN on batch statistics, "
        f"{args.threads} thread(s), CPU seconds"
    )
    print("  similarity construction from the stored maps (hashes + pairwise similarity, every conv):")
    print(f"    prunekit (batched DCT hash, Hamming as matrix products): {t_vec:8.2f} s")
    print(f"    original (hash per map, loop over pairs and images):      {t_loop:8.2f} s {scaled}")
    print(f"    speed-up: {t_loop / t_vec:.1f}x")
    print("  end to end, with the forward pass:")
    print(f"    prunekit, every conv (hashed inside the pass):           {t_ours:8.2f} s")
    print(f"    prunekit, the method's graphs only (group leaders):      {t_method:8.2f} s")
    print(f"    original (store every map, then the loops):              {t_loop + t_loop_forward:8.2f} s")
    print(f"    speed-up (every conv): {(t_loop + t_loop_forward) / t_ours:.1f}x")
    print(f"  max |similarity difference| on the {args.loop_images} shared images: {worst:g}")


if __name__ == "__main__":
    main()
