"""HRank (Lin et al., CVPR 2020): the feature-map rank criterion (`criterion`), the per-architecture layouts
of HRank's code (`layouts`) and its masked layer-by-layer schedule (`schedule`)."""

from prunekit.methods.hrank.criterion import (
    DEFAULT_IMAGES,
    HRank,
    HRankOptions,
    feature_map_ranks,
    hrank_legacy_cost,
    hrank_plan,
    hrank_scores,
    hrank_select,
    true_pruned_cost,
)

__all__ = [
    "DEFAULT_IMAGES",
    "HRank",
    "HRankOptions",
    "feature_map_ranks",
    "hrank_legacy_cost",
    "hrank_plan",
    "hrank_scores",
    "hrank_select",
    "true_pruned_cost",
]
