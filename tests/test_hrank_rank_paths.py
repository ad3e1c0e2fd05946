"""HRank's rank test by cases — all-zero lines, a Cholesky certificate on either side's Gram matrix, Gram
eigenvalues, and the SVD only near the tolerance — equal to `torch.linalg.matrix_rank` map by map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.methods.feature_pass import feature_pass
from prunekit.methods.hrank import criterion, feature_map_ranks
from prunekit.methods.hrank.layouts import layout_for
from prunekit.models import create

EPS = torch.finfo(torch.float32).eps


def low_rank_maps(n: int, rank: int, count: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, n, rank, generator=g) @ torch.randn(count, rank, n, generator=g)


def with_singular_values(sigma: list[float], seed: int = 0) -> Tensor:
    """A square float64 map Q·diag(σ)·Qᵀ with a random orthogonal Q."""
    n = len(sigma)
    q = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )[0]
    return (q * torch.tensor(sigma, dtype=torch.float64)) @ q.T


def ranks_of(maps: list[Tensor]) -> list[int]:
    return [int(feature_map_ranks(m.float().view(1, 1, *m.shape))) for m in maps]


def paths(stack: Tensor) -> dict[str, int]:
    """How many of the (N, H, W) maps each path of `feature_map_ranks` decides, step by step."""
    h, w = stack.shape[1:]
    gram = criterion._gram(stack, "columns" if w <= h else "rows")
    first = criterion._certify(gram, max(h, w))
    nonzero = stack.ne(0)
    rows, cols = nonzero.any(2).sum(1), nonzero.any(1).sum(1)
    retry = (first < 0) & (rows < cols if w <= h else cols < rows)
    second = torch.full_like(first, -1)
    second[retry] = criterion._certify(
        criterion._gram(stack[retry], "rows" if w <= h else "columns"), max(h, w)
    )
    _, unsure = criterion._eigen_ranks(gram[(first < 0) & (second < 0)], h, w)
    return {
        "zero": int((first == 0).sum()),
        "certified": int((first > 0).sum()),
        "other side": int((second >= 0).sum()),
        "eigen": int((~unsure).sum()),
        "svd": int(unsure.sum()),
    }


def test_hand_made_hard_maps() -> None:
    eye6 = torch.eye(6)
    border = torch.zeros(6, 6)
    border[1:5, 1:5] = 1.0  # a constant patch inside zero lines
    gaps = torch.diag(torch.tensor([1.0, 1, 0, 1, 0, 1]))  # two zero rows and two zero columns
    two_rows = torch.zeros(6, 6)
    two_rows[0], two_rows[1] = torch.arange(1.0, 7.0), torch.arange(6.0, 0.0, -1.0)  # no zero column
    cross = torch.zeros(6, 6)
    cross[0], cross[:, 0] = 1.0, 2.0  # no zero line, but only two independent rows
    u, v = torch.arange(1.0, 7.0), torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0, 2.0])
    two = torch.outer(u, v) + torch.outer(v, u.flip(0))
    wide = torch.zeros(3, 6)
    wide[:, 1], wide[:, 4] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0])  # 3 rows, 2 cols
    maps = [
        torch.zeros(6, 6), torch.ones(6, 6), border, eye6, -eye6, gaps, two_rows, cross, two,
        1e-30 * eye6, 1e30 * eye6, torch.zeros(1, 1), torch.full((1, 1), 3.0), torch.full((1, 1), -2.0),
        torch.eye(3, 6), wide, wide.T, torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0]]),
    ]  # fmt: skip
    expected = [0, 1, 1, 6, 6, 4, 2, 2, 2, 6, 6, 0, 1, 1, 3, 2, 2, 1]
    assert ranks_of(maps) == expected
    assert [int(torch.linalg.matrix_rank(m)) for m in maps] == expected


def test_the_certificate_proves_the_count_of_nonzero_lines() -> None:
    maps = torch.zeros(4, 6, 6)
    maps[1] = torch.eye(6)
    maps[2, 1:4, :3] = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])  # 3 lines each side
    maps[3] = torch.outer(torch.arange(1.0, 7.0), torch.arange(2.0, 8.0))  # rank 1, no zero line
    assert criterion._certify(criterion._gram(maps, "columns"), 6).tolist() == [0, 6, 3, -1]


def test_the_certificate_needs_twice_the_tolerance_from_the_frobenius_norm() -> None:
    # diag(1, ..., 1, t): ‖M‖_F ≈ √7, so the certificate needs t > 2·√7·8·ε. At half that it declines and the
    # eigenvalues rank the map (t is still far above matrix_rank's σ_max·8·ε); at twice that it proves it.
    n, frob = 8, 7**0.5
    maps = torch.stack(
        [torch.diag(torch.tensor([1.0] * (n - 1) + [c * 2 * frob * n * EPS])) for c in (0.5, 2.0)]
    )
    assert criterion._certify(criterion._gram(maps, "columns"), n).tolist() == [-1, n]
    assert feature_map_ranks(maps.view(1, 2, n, n)).tolist() == [[n, n]]


def test_a_map_with_fewer_nonzero_rows_is_proved_on_its_row_side() -> None:
    maps = torch.zeros(2, 6, 6)
    maps[0, 0], maps[0, 1] = torch.arange(1.0, 7.0), torch.arange(6.0, 0.0, -1.0)  # rank 2, no zero column
    maps[1] = torch.eye(6)
    assert criterion._certify(criterion._gram(maps, "columns"), 6).tolist() == [-1, 6]
    assert criterion._certify(criterion._gram(maps, "rows"), 6).tolist() == [2, 6]
    assert feature_map_ranks(maps.view(1, 2, 6, 6)).tolist() == [[2, 6]]
    wide = torch.zeros(1, 3, 6)
    wide[0, :, 1], wide[0, :, 4] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0])
    assert criterion._certify(criterion._gram(wide, "rows"), 6).tolist() == [-1]  # 3 nonzero rows, rank 2
    assert criterion._certify(criterion._gram(wide, "columns"), 6).tolist() == [2]  # 2 nonzero columns
    assert feature_map_ranks(wide.view(1, 1, 3, 6)).tolist() == [[2]]


def test_rank_deficient_maps_are_ranked_by_eigenvalues_exactly() -> None:
    maps = torch.cat([low_rank_maps(16, r, 40, r) for r in (1, 4, 9, 15)])  # ranks 1, 4, 9, 15
    maps[::5, 2] = 0  # a dead row (ReLU) lowers some ranks further
    expected = torch.tensor([1, 4, 9, 15]).repeat_interleave(40)
    decided = paths(maps)
    # No zero column, so no column certificate; only the rank-15 maps with a dead row (8 of them) have as
    # few nonzero rows as their rank, and their row side proves it. Every other map goes to the eigenvalues.
    assert decided == {"zero": 0, "certified": 0, "other side": 8, "eigen": 152, "svd": 0}
    gram = criterion._gram(maps, "columns")
    ranks, unsure = criterion._eigen_ranks(gram, 16, 16)
    assert not bool(unsure.any())  # far from the tolerance: the eigenvalues decide every map
    assert torch.equal(ranks, expected)
    assert torch.equal(feature_map_ranks(maps.view(4, 40, 16, 16)).flatten(), torch.linalg.matrix_rank(maps))


def test_a_singular_value_at_the_tolerance_goes_to_the_svd() -> None:
    # σ = (1, ..., 1, t·τ) with τ = σ_max·max(H, W)·ε: at t = 1 ± 0.3 the eigenvalues cannot be trusted to
    # agree with float32 SVD rounding, so matrix_rank decides; at t = 1e-3 or 10 they decide.
    n = 8
    factors = [1e-3, 0.7, 1.0, 1.3, 10.0]
    maps = torch.stack([with_singular_values([1.0] * (n - 1) + [f * n * EPS]) for f in factors]).float()
    _, unsure = criterion._eigen_ranks(criterion._gram(maps, "columns"), n, n)
    assert unsure.tolist() == [False, True, True, True, False]
    assert torch.equal(feature_map_ranks(maps.view(1, -1, n, n)).flatten(), torch.linalg.matrix_rank(maps))


def test_the_tolerance_counts_the_whole_map_not_its_nonzero_lines() -> None:
    # A 4×4 block with σ = (1, 1, 1, f·16·ε) inside a 16×16 map of zeros: matrix_rank's tolerance is
    # σ_max·16·ε (the map's size, not the block's), so f = 0.5 drops the last σ, f ≥ 2.5 keeps it.
    factors = [0.5, 0.9, 1.1, 1.5, 2.5, 4.0, 10.0]
    rows, cols = torch.tensor([1, 5, 9, 14]), torch.tensor([0, 3, 7, 15])
    maps = torch.zeros(len(factors), 16, 16)
    for i, f in enumerate(factors):
        maps[i, rows[:, None], cols] = with_singular_values([1.0, 1.0, 1.0, f * 16 * EPS], seed=i).float()
    ranks = feature_map_ranks(maps.view(1, -1, 16, 16)).flatten()
    assert torch.equal(ranks, torch.linalg.matrix_rank(maps))
    assert ranks[0] == 3 and ranks[-3:].tolist() == [4, 4, 4]


def test_chunks_give_the_ranks_of_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = torch.relu(torch.cat([torch.randn(20, 12, 12), low_rank_maps(12, 3, 10, 7)]))
    maps[4] = 0
    whole = feature_map_ranks(maps.view(1, -1, 12, 12))
    monkeypatch.setattr(criterion, "_CHUNK_BYTES", 3 * 12 * 12 * 8)  # three maps per chunk
    assert torch.equal(feature_map_ranks(maps.view(1, -1, 12, 12)), whole)
    assert torch.equal(whole.flatten(), torch.linalg.matrix_rank(maps))


def test_maps_that_are_not_finite_are_refused() -> None:
    maps = torch.ones(1, 2, 4, 4)
    maps[0, 1, 2, 3] = float("nan")
    with pytest.raises(ConfigError, match="not finite"):
        feature_map_ranks(maps)


def post_relu_maps(model: torch.nn.Module, images: Tensor) -> list[Tensor]:
    maps: list[Tensor] = []
    taps = layout_for(model).taps
    feature_pass(model, images, taps, lambda _c, m: maps.append(m.clone()), n_images=len(images))
    return maps


def test_real_resnet56_maps_equal_matrix_rank(shared_data: Path) -> None:
    # Post-ReLU maps of every ranked ResNet-56 conv: Fashion-MNIST images (28, 14, 7 px maps, large black
    # backgrounds) and CIFAR-sized 32×32 inputs (32, 16, 8 px).
    test = load_dataset("fashion_mnist", "test", root=shared_data, download=False)
    fashion = (test.images[:3].float() / 255 - test.mean[0]) / test.std[0]
    counts: dict[str, int] = {}
    for model, images in (
        (create("resnet56", in_channels=1), fashion),
        (create("resnet56"), torch.randn(2, 3, 32, 32)),
    ):
        for maps in post_relu_maps(model.eval(), images):
            stack = maps.flatten(0, 1)
            assert torch.equal(feature_map_ranks(maps).flatten(), torch.linalg.matrix_rank(stack))
            for key, value in paths(stack).items():
                counts[key] = counts.get(key, 0) + value
    assert all(value > 0 for value in counts.values()), counts  # every path was exercised


def test_chunks_spread_over_threads_give_the_same_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = torch.relu(torch.cat([torch.randn(30, 12, 12), low_rank_maps(12, 3, 10, 7)]))
    maps[4] = 0
    one = feature_map_ranks(maps.view(1, -1, 12, 12))
    monkeypatch.setattr(criterion, "_CHUNK_BYTES", 3 * 12 * 12 * 8)  # 14 chunks of three maps
    bad = torch.ones(1, 2, 4, 4)
    bad[0, 1, 0, 0] = float("inf")  # in every chunk
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(feature_map_ranks(maps.view(1, -1, 12, 12)), one)
        assert torch.get_num_threads() == 2  # restored after the ranking ran its ops single-threaded
        with pytest.raises(ConfigError, match="not finite"):  # raised in a worker, re-raised here
            feature_map_ranks(bad.expand(64, 2, 4, 4).contiguous())  # five chunks
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_ranking_overlapped_with_the_forward_gives_the_sequential_scores() -> None:
    # With several threads each tap's maps are ranked by workers while the forward goes on: the integer
    # sums must be those of the one-thread pass, a worker's error must surface, and the thread count return.
    from prunekit.methods.hrank import hrank_scores

    torch.manual_seed(0)
    model = create("resnet20").eval()
    images = torch.randn(24, 3, 32, 32)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        sequential = hrank_scores(model, images, n_images=24, batch_size=8)
        torch.set_num_threads(2)
        overlapped = hrank_scores(model, images, n_images=24, batch_size=8)
        assert torch.get_num_threads() == 2
        assert sequential.keys() == overlapped.keys()
        assert all(torch.equal(sequential[k], overlapped[k]) for k in sequential)
        broken = create("resnet20").eval()
        with torch.no_grad():
            broken.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")  # every later map is NaN
        with pytest.raises(ConfigError, match="not finite"):
            hrank_scores(broken, images, n_images=24, batch_size=8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
