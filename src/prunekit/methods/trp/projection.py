"""TRP's per-step tensor work (specs/trp.md §3-§4): rank rules on stacks of singular values, and the
truncated-SVD projection with its nuclear-norm sub-gradient, batched over layers of equal shape.

Everything runs on the weights' device (the GPU when the model is there) in float64, one batched SVD per
distinct weight shape (`surgery.lowrank._by_shape`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.surgery.lowrank import _by_shape, from_matrix, to_matrix


def energy_ranks(sigma: Tensor, keep: float) -> Tensor:
    """Per row of `sigma` (descending singular values), TRP's EnergyThreshold: the smallest k with
    Σ_{i≤k} σ_i² / Σ σ_i² ≥ `keep`; `keep` = 1 keeps every value. An all-zero row gets 1 (rank 0 is
    never built)."""
    full = sigma.shape[-1]
    if keep >= 1.0:
        return torch.full(sigma.shape[:-1], full, dtype=torch.long, device=sigma.device)
    power = sigma.to(torch.float64).square()
    total = power.sum(-1, keepdim=True)
    share = power.cumsum(-1) / total.clamp_min(torch.finfo(torch.float64).tiny)
    # Values short of the share count; the first one that reaches it is kept too. Round-off can keep
    # the last share a hair under a threshold close to 1: the clamp keeps everything then.
    ranks = (share < keep).sum(-1) + 1
    ranks = torch.where(total.squeeze(-1) == 0, torch.ones_like(ranks), ranks)
    return ranks.clamp(1, full)


def value_ranks(sigma: Tensor, threshold: float) -> Tensor:
    """Per row, TRP's ValueThreshold: how many singular values are ≥ `threshold`, at least 1 (the release
    can return 0; a rank-0 layer is never built)."""
    return (sigma >= threshold).sum(-1).clamp_min(1)


@dataclass(frozen=True)
class Projection:
    """One layer's truncated SVD: the rank-`rank` weight U_r Σ_r V_rᵀ and the nuclear-norm sub-gradient
    U_r V_rᵀ, both in the conv weight's shape, dtype and device. ND truncates each output filter at its
    own rank; `rank` is then the largest (the common rank its decomposition would take)."""

    weight: Tensor
    subgradient: Tensor
    rank: int


def project(weights: Sequence[Tensor], scheme: str, keep: float) -> list[Projection]:
    """The energy-`keep` truncation of each conv weight's `scheme` matrix (no autograd)."""
    matrices = [to_matrix(w.detach(), scheme) for w in weights]

    def truncate(stack: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Batched over layers (and, for ND, over each layer's filters): every matrix keeps its own rank.
        u, s, vh = torch.linalg.svd(stack, full_matrices=False)
        ranks = energy_ranks(s, keep)
        kept = (torch.arange(s.shape[-1], device=s.device) < ranks[..., None]).to(s.dtype)
        low = (u * (s * kept).unsqueeze(-2)) @ vh
        sub = (u * kept.unsqueeze(-2)) @ vh
        return low, sub, ranks.reshape(len(stack), -1).amax(-1)

    out = []
    for w, (low, sub, rank) in zip(weights, _by_shape(matrices, truncate), strict=True):
        out.append(
            Projection(
                from_matrix(low, scheme, w.shape).to(w.dtype),
                from_matrix(sub, scheme, w.shape).to(w.dtype),
                int(rank),
            )
        )
    return out
