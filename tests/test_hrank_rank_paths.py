"""HRank's rank test by cases: zero maps, a Cholesky full-rank certificate, Gram eigenvalues, and the SVD
only near the tolerance — equal to `torch.linalg.matrix_rank` map by map."""

from __future__ import annotations

import torch

from prunekit.methods.hrank import criterion, feature_map_ranks


def low_rank_maps(n: int, rank: int, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, n, rank, generator=g) @ torch.randn(count, rank, n, generator=g)


def test_rank_deficient_maps_are_ranked_by_eigenvalues_exactly() -> None:
    maps = torch.cat([low_rank_maps(16, r, 40, r) for r in (1, 4, 9, 15)])  # ranks 1, 4, 9, 15
    maps[::5, 2] = 0  # a dead row (ReLU) lowers some ranks further
    gram = criterion._gram(maps)
    assert not bool(criterion._surely_full_rank(gram, 16, 16).any())  # no map is certified full rank
    ranks, unsure = criterion._eigen_ranks(gram, 16, 16)
    assert not bool(unsure.any())  # far from the tolerance: the eigenvalues decide every map
    expected = torch.tensor([1, 4, 9, 15]).repeat_interleave(40)
    expected[::5] = torch.minimum(expected[::5], torch.tensor(15))  # 15 nonzero rows left
    assert torch.equal(ranks, expected)
    assert torch.equal(feature_map_ranks(maps.view(4, 40, 16, 16)).flatten(), torch.linalg.matrix_rank(maps))


def test_a_singular_value_at_the_tolerance_goes_to_the_svd() -> None:
    # σ = (1, ..., 1, t·τ) with τ = σ_max·max(H, W)·ε: at t = 1 ± 0.3 the eigenvalues cannot be trusted to
    # agree with float32 SVD rounding, so matrix_rank decides; at t = 1e-3 or 10 they decide.
    n = 8
    tol = n * torch.finfo(torch.float32).eps
    q = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    factors = [1e-3, 0.7, 1.0, 1.3, 10.0]
    maps = torch.stack(
        [(q * torch.tensor([1.0] * (n - 1) + [f * tol], dtype=torch.float64)) @ q.T for f in factors]
    )
    maps = maps.float()
    _, unsure = criterion._eigen_ranks(criterion._gram(maps), n, n)
    assert unsure.tolist() == [False, True, True, True, False]
    assert torch.equal(feature_map_ranks(maps.view(1, -1, n, n)).flatten(), torch.linalg.matrix_rank(maps))
