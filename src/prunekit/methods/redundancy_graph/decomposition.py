"""k-core decomposition of a redundancy graph (specs/redundancy_graph.md §2), without igraph.

    while G has an edge:
        k* ← the largest k with a non-empty k-core (the degeneracy of G)
        for each connected component Q of the k*-core:
            keep the vertex of Q with the largest L1 norm (ties → lowest index), delete the rest of Q
    kept ← the vertices left

The kept set is an independent set of the graph (no two kept filters are similar), isolated vertices are
always kept, and each round deletes at least one vertex — but it is usually not a maximal independent
set: a component of the densest core collapses to one vertex even where some members are not similar to
the survivor. The loop is implemented literally, on dense boolean adjacency matrices (a layer has at
most a few thousand filters); every step is a tensor operation over all vertices at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ConfigError


@dataclass(frozen=True)
class Decomposition:
    """`kept`: surviving vertices, ascending; `rounds`: the vertices deleted in each round, ascending."""

    kept: list[int]
    rounds: list[list[int]]


def coreness(adjacency: Tensor, alive: Tensor | None = None) -> Tensor:
    """Core number of every vertex of the graph induced on `alive` (int64; 0 outside it).

    Level peeling (Batagelj–Zaversnik by levels): at level k, delete every vertex of degree ≤ k, repeat
    until none is left, then raise k to the smallest remaining degree. A vertex deleted at level k has
    core number k."""
    n = adjacency.shape[0]
    alive = torch.ones(n, dtype=torch.bool) if alive is None else alive.clone()
    adj = adjacency & alive[None, :] & alive[:, None]
    degree = adj.sum(1)
    core = torch.zeros(n, dtype=torch.long)
    level = 0
    while bool(alive.any()):
        level = max(level, int(degree[alive].min()))
        while True:
            peeled = alive & (degree <= level)
            if not bool(peeled.any()):
                break
            core[peeled] = level
            alive &= ~peeled
            degree -= adj[:, peeled].sum(1)
    return core


def components(adjacency: Tensor, members: Tensor) -> Tensor:
    """Component label of every vertex in `members` (the smallest vertex index of its component), -1
    elsewhere: minimum-label propagation, one matrix step per hop of the longest shortest path."""
    n = adjacency.shape[0]
    index = torch.arange(n)
    labels = torch.where(members, index, n)
    adj = adjacency & members[None, :] & members[:, None]
    while True:
        neighbour_min = torch.where(adj, labels[None, :], n).amin(1)
        new = torch.where(members, torch.minimum(labels, neighbour_min), n)
        if torch.equal(new, labels):
            break
        labels = new
    return torch.where(members, labels, -1)


def kcore_collapse(adjacency: Tensor, importance: Tensor) -> Decomposition:
    """The spec's decomposition loop on a symmetric boolean adjacency (n, n) with one importance value
    (L1 norm) per vertex."""
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ConfigError(f"adjacency must be square (n, n), got shape {tuple(adjacency.shape)}")
    n = adjacency.shape[0]
    if importance.shape != (n,):
        raise ConfigError(f"importance must have one value per vertex ({n}), got {tuple(importance.shape)}")
    adj = adjacency.to(torch.bool).cpu().clone()
    adj.fill_diagonal_(False)
    if not torch.equal(adj, adj.T):
        raise ConfigError("the redundancy graph is undirected: its adjacency must be symmetric")
    score = importance.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(score).all()):
        raise ConfigError("filter importance (L1 norms) must be finite")
    alive = torch.ones(n, dtype=torch.bool)
    rounds: list[list[int]] = []
    while bool((adj & alive[None, :] & alive[:, None]).any()):
        core = coreness(adj, alive)
        densest = alive & (core == core[alive].max())
        labels = components(adj, densest)
        deleted = densest.clone()
        for label in labels[densest].unique().tolist():
            members = (labels == label).nonzero().flatten()  # ascending: argmax's first hit is the lowest
            deleted[members[score[members].argmax()]] = False
        rounds.append(deleted.nonzero().flatten().tolist())
        alive &= ~deleted
    return Decomposition(alive.nonzero().flatten().tolist(), rounds)
