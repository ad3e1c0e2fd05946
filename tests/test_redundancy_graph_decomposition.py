"""k-core decomposition of redundancy graphs (specs/redundancy_graph.md §2): the spec's worked examples and
properties on random graphs, against a slow reference written from the definitions."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError
from prunekit.methods.redundancy_graph import coreness, kcore_collapse


def graph(n: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    adj = torch.zeros(n, n, dtype=torch.bool)
    for i, j in pairs:
        adj[i, j] = adj[j, i] = True
    return adj


def reference_coreness(adj: list[set[int]], alive: set[int]) -> dict[int, int]:
    """Core number by definition: the largest k such that v survives repeated deletion of degree < k."""
    core = dict.fromkeys(alive, 0)
    for k in range(1, len(alive) + 1):
        left = set(alive)
        while True:
            low = {v for v in left if len(adj[v] & left) < k}
            if not low:
                break
            left -= low
        for v in left:
            core[v] = k
    return core


def reference_collapse(n: int, pairs: list[tuple[int, int]], l1: list[float]) -> tuple[list[int], int]:
    """The spec's loop, literally, with sets: (kept, rounds)."""
    adj = [set() for _ in range(n)]
    for i, j in pairs:
        adj[i].add(j)
        adj[j].add(i)
    alive, rounds = set(range(n)), 0
    while any(adj[v] & alive for v in alive):
        core = reference_coreness(adj, alive)
        top = max(core.values())
        dense = {v for v in alive if core[v] == top}
        seen: set[int] = set()
        for start in sorted(dense):
            if start in seen:
                continue
            comp, stack = set(), [start]
            while stack:
                v = stack.pop()
                if v not in comp:
                    comp.add(v)
                    stack.extend(adj[v] & dense)
            seen |= comp
            keep = max(sorted(comp), key=lambda v: (l1[v], -v))
            alive -= comp - {keep}
        rounds += 1
    return sorted(alive), rounds


def test_path_keeps_only_its_largest_l1_filter() -> None:
    # a-b-c: every vertex has coreness 1, the 1-core is one component, it collapses to b.
    result = kcore_collapse(graph(3, [(0, 1), (1, 2)]), torch.tensor([1.0, 3.0, 2.0]))
    assert result.kept == [1]
    assert result.rounds == [[0, 2]]


def test_triangle_with_pendants_keeps_the_survivor_and_the_freed_pendants() -> None:
    # Triangle {a, b, c} + d-a + e-b: the 2-core {a, b, c} collapses to c; d and e are then isolated.
    adj = graph(5, [(0, 1), (1, 2), (0, 2), (3, 0), (4, 1)])
    result = kcore_collapse(adj, torch.tensor([1.0, 2.0, 3.0, 0.5, 0.5]))
    assert result.kept == [2, 3, 4]
    assert result.rounds == [[0, 1]]
    assert coreness(adj).tolist() == [2, 2, 2, 1, 1]


def test_equal_l1_keeps_the_lowest_index_and_isolated_vertices_stay() -> None:
    adj = graph(5, [(1, 3), (3, 4)])
    result = kcore_collapse(adj, torch.tensor([7.0, 2.0, 9.0, 2.0, 2.0]))
    assert result.kept == [0, 1, 2]


def test_a_component_collapses_whole_so_the_kept_set_need_not_be_maximal() -> None:
    # Path 0-1-2-3: one 1-core component, collapsed to 3, although 0 is not similar to 3.
    result = kcore_collapse(graph(4, [(0, 1), (1, 2), (2, 3)]), torch.tensor([0.0, 0.0, 0.0, 9.0]))
    assert result.kept == [3]


def test_later_rounds_work_on_what_is_left() -> None:
    # K4 {0,1,2,3} plus a path 3-4-5: round 1 collapses the 3-core K4 to 0 (largest L1), which frees
    # 4-5 (coreness 1 now) for round 2, keeping 5.
    adj = graph(6, [*itertools.combinations(range(4), 2), (3, 4), (4, 5)])
    result = kcore_collapse(adj, torch.tensor([9.0, 1.0, 1.0, 1.0, 1.0, 2.0]))
    assert result.rounds == [[1, 2, 3], [4]]
    assert result.kept == [0, 5]


def test_bad_graphs_are_refused() -> None:
    with pytest.raises(ConfigError, match="symmetric"):
        kcore_collapse(torch.tensor([[False, True], [False, False]]), torch.ones(2))
    with pytest.raises(ConfigError, match="one value per vertex"):
        kcore_collapse(graph(3, []), torch.ones(2))
    with pytest.raises(ConfigError, match="finite"):
        kcore_collapse(graph(2, [(0, 1)]), torch.tensor([1.0, float("nan")]))


@st.composite
def random_graphs(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[float]]:
    n = draw(st.integers(1, 11))
    pairs = list(itertools.combinations(range(n), 2))
    density = draw(st.sampled_from([0.15, 0.35, 0.6, 0.9]))
    chosen = [p for p in pairs if draw(st.floats(0, 1)) < density] if pairs else []
    l1 = draw(st.lists(st.integers(0, 3).map(float), min_size=n, max_size=n))  # ties are common
    return n, chosen, l1


@settings(max_examples=150, deadline=None)
@given(random_graphs())
def test_random_graphs_match_the_reference_and_keep_an_independent_set(
    case: tuple[int, list[tuple[int, int]], list[float]],
) -> None:
    n, pairs, l1 = case
    adj = graph(n, pairs)
    result = kcore_collapse(adj, torch.tensor(l1))
    kept, rounds = reference_collapse(n, pairs, l1)
    assert result.kept == kept and len(result.rounds) == rounds
    keep = torch.tensor(result.kept, dtype=torch.long)
    assert not bool(adj[keep][:, keep].any())  # independent: no two kept filters are similar
    isolated = (~adj.any(1)).nonzero().flatten().tolist()
    assert set(isolated) <= set(result.kept)
    assert all(len(deleted) >= 1 for deleted in result.rounds)
    assert sorted(result.kept + [v for r in result.rounds for v in r]) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(random_graphs())
def test_coreness_matches_the_definition(case: tuple[int, list[tuple[int, int]], list[float]]) -> None:
    n, pairs, _ = case
    adj_sets = [set() for _ in range(n)]
    for i, j in pairs:
        adj_sets[i].add(j)
        adj_sets[j].add(i)
    expected = reference_coreness(adj_sets, set(range(n)))
    assert coreness(graph(n, pairs)).tolist() == [expected[v] for v in range(n)]
