"""Perceptual hashes of feature maps and the pairwise hash similarity of a layer's filters
(specs/redundancy_graph.md §1.2–1.3).

Hash of one H×W map X: the unnormalised DCT-II ``D = C_H X C_Wᵀ`` with ``C_N[k, n] = 2 cos(πk(2n+1)/2N)``
(scipy's ``dct(·, type=2)`` along each axis), its top-left K×K block B with ``K = min(8, H, W)``, and one
bit per coefficient: ``B_uv ≥ mean(B)`` (DC term included). Any uniform positive scaling of the DCT gives
the same bits; the orthonormal DCT does not (it scales the DC row and column differently).

Similarity of filters i and j over N images: ``S_ij = 1 − Σ_t Hamming(h_i(t), h_j(t)) / (K²·N)``. The
Hamming counts are integers accumulated batch by batch as matrix products of the bit matrices (no loop
over pairs or images) and S is formed once, in float64: exact ties ``S = τ`` are common (τ = 0.7 with
100 images of 8×8 hashes is 1920 differing bits) and must become edges.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from prunekit.errors import ConfigError

#: Side of the largest hashed DCT block (64 bits).
HASH_SIDE = 8


def hash_side(height: int, width: int) -> int:
    """K of a map's hash. The original reads only one side (square maps); K = min(8, H, W) keeps the
    block inside the DCT of a non-square map."""
    return min(HASH_SIDE, height, width)


@lru_cache(maxsize=32)
def _dct_rows(n: int, k: int) -> Tensor:
    """The first `k` rows of the unnormalised DCT-II matrix of size `n` (cosines in float64, stored as
    float32)."""
    freq = torch.arange(k, dtype=torch.float64)[:, None]
    pos = torch.arange(n, dtype=torch.float64)[None, :]
    return (2 * torch.cos(math.pi * freq * (2 * pos + 1) / (2 * n))).float()


def phash(maps: Tensor) -> Tensor:
    """Bits of every (H, W) map of a (B, C, H, W) batch, as a bool tensor (B, C, K, K).

    The DCT is computed in float32, as the original's (scipy on float32 maps). Degenerate maps (spec §1.2)
    hash as in exact arithmetic: a constant c > 0 sets only the DC bit, an all-zero map every bit, a
    constant c < 0 every bit but the DC one — rounding alone would scatter their zero coefficients around
    the mean, so coefficients at rounding level are set to exactly 0 first.
    """
    if maps.dim() != 4:
        raise ConfigError(f"feature maps to hash must be (B, C, H, W), got shape {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    k = hash_side(h, w)
    x = maps.detach().to(torch.float32)
    rows, cols = _dct_rows(h, k).to(x.device), _dct_rows(w, k).to(x.device)
    # Only the top-left K×K of C_H X C_Wᵀ is ever needed: two large matrix products over every map at
    # once (columns, then rows) rather than a batch of tiny ones.
    lead = x.shape[:-2]
    by_col = (x.reshape(-1, w) @ cols.T).view(-1, h, k).transpose(1, 2)  # (maps, K cols, H)
    block = (by_col.reshape(-1, h) @ rows.T).view(*lead, k, k).transpose(-1, -2)  # (B, C, K rows, K cols)
    # The zero coefficients of a constant map come out as rounding noise of a few ε·|DC|; a coefficient
    # below 64·ε times the block's largest counts as 0. (Scaled by the block, not by a second pass over the
    # maps, which would cost more than the DCT.)
    magnitude = block.abs()
    scale = magnitude.amax(dim=(-2, -1), keepdim=True)
    block = torch.where(magnitude <= 64 * torch.finfo(torch.float32).eps * scale, 0.0, block)
    return block >= block.mean(dim=(-2, -1), keepdim=True)


class HammingAccumulator:
    """Σ over images of the Hamming distance between every pair of a layer's filter hashes, fed batch by
    batch: ``add(bits)`` with bits (B, C, K, K). Counts are exact integers (float64 sums of exact float32
    products), so `similarity` is exact up to its final division."""

    def __init__(self) -> None:
        self.distance: Tensor | None = None
        self.images = 0
        self.bits = 0  # K² of this layer's hashes

    def add(self, bits: Tensor) -> None:
        b, c = bits.shape[:2]
        per_hash = bits.shape[-2] * bits.shape[-1]
        if self.bits and per_hash != self.bits:
            raise ConfigError(f"hash size changed between batches ({self.bits} vs {per_hash} bits)")
        # (C, B·K²) 0/1 matrix; Hamming(i, j) = ones_i + ones_j − 2·common_ij, summed over the batch.
        # Float32 products are exact here: every count is at most B·K² (≪ 2²⁴).
        flat = bits.transpose(0, 1).reshape(c, b * per_hash).to(torch.float32)
        ones = flat.sum(1)
        common = flat @ flat.T
        batch = (ones[:, None] + ones[None, :] - 2 * common).to(torch.float64)
        self.distance = batch if self.distance is None else self.distance + batch
        self.images += b
        self.bits = per_hash

    def similarity(self) -> Tensor:
        """S (C, C) in float64: 1 − mean Hamming / K²; the diagonal is 1."""
        if self.distance is None:
            raise ConfigError("no feature maps were hashed; the similarity needs at least one image")
        return 1.0 - self.distance / (self.bits * self.images)


def similarity(bits: Tensor) -> Tensor:
    """S (C, C), float64, of hashes (N, C, K, K) of N images: ``1 − Σ_t Hamming / (K²·N)``."""
    acc = HammingAccumulator()
    acc.add(bits)
    return acc.similarity()


def edges(sim: Tensor, tau: float) -> Tensor:
    """Adjacency (C, C) bool of the redundancy graph: ``S_ij ≥ τ`` for i ≠ j (inclusive, as the original).

    S is one float64 division of an integer count, which lands on the decimal τ at a tie for the paper's
    thresholds and hash sizes (a float32 or averaged-per-image similarity need not: the first code version
    computes 0.6999999999999998 for 7×7 maps at a tie and drops the edge). A margin of 1e-9, far below the
    1/(K²·N) step between similarity values, keeps a tie an edge however S was rounded."""
    if not 0.0 < tau <= 1.0:
        raise ConfigError(f"tau must be in (0, 1], got {tau:g}: tau <= 0 would connect every pair of filters")
    adjacency = sim >= tau - 1e-9
    adjacency.fill_diagonal_(False)
    return adjacency
