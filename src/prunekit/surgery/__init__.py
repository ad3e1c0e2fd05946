"""Physical edits: plans (channels through a dependency graph, low-rank factorisations, masks) applied by
one `apply`, and the edit history that rebuilds a pruned model from its base architecture."""

from prunekit.surgery.channels import ApplyReport, ChannelPlan, apply_with_report
from prunekit.surgery.equivalence import OutputComparison, check_same_outputs, compare_outputs
from prunekit.surgery.graph import PrunableLayer, coupling_groups, prunable_layers
from prunekit.surgery.history import record, record_masks, replay
from prunekit.surgery.lowrank import LowRankConv2d, decompose, energy_rank, full_rank, rank_plan
from prunekit.surgery.masks import MaskHandle, MaskSet, attach, fold
from prunekit.surgery.plan import LowRankPlan, MaskPlan, Plan, apply, plan_kind

__all__ = [
    "ApplyReport",
    "ChannelPlan",
    "LowRankConv2d",
    "LowRankPlan",
    "MaskHandle",
    "MaskPlan",
    "MaskSet",
    "OutputComparison",
    "Plan",
    "PrunableLayer",
    "apply",
    "apply_with_report",
    "attach",
    "check_same_outputs",
    "compare_outputs",
    "coupling_groups",
    "decompose",
    "energy_rank",
    "fold",
    "plan_kind",
    "full_rank",
    "prunable_layers",
    "rank_plan",
    "record",
    "record_masks",
    "replay",
]
