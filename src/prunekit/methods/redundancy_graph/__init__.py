"""Redundancy-graph decomposition (Li et al., Neurocomputing 2024): perceptual hashes of feature maps
(`hashing`), k-core collapse of each layer's similarity graph (`decomposition`), and the method (`method`)."""

from prunekit.methods.redundancy_graph.decomposition import Decomposition, coreness, kcore_collapse
from prunekit.methods.redundancy_graph.hashing import HammingAccumulator, edges, phash, similarity
from prunekit.methods.redundancy_graph.method import RedundancyGraph, RedundancyGraphOptions

__all__ = [
    "Decomposition",
    "HammingAccumulator",
    "RedundancyGraph",
    "RedundancyGraphOptions",
    "coreness",
    "edges",
    "kcore_collapse",
    "phash",
    "similarity",
]
