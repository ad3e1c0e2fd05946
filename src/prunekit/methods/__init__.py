"""Pruning methods behind one protocol: ``create_method(name, **options)``, ``list_methods()``."""

from prunekit.methods import (  # noqa: F401  (registration)
    deephoyer,
    fpgm,
    hrank,
    l1,
    random_filters,
    redundancy_graph,
    slimming,
    torch_pruning,  # noqa: F401  (registration: Torch-Pruning's pruners)
    tpp,
    trp,  # noqa: F401  (registration: trp, nuclear)
)
from prunekit.methods.base import (
    Calib,
    ChannelKeep,
    Method,
    Plan,
    Pruned,
    Schedule,
    ScoringMethod,
    create_method,
    list_methods,
    method_class,
    register_method,
    select_kept,
)
from prunekit.methods.budget import BudgetResult, meet
from prunekit.methods.selection import Budget, Selection, parse_selection, resolve_ratios
from prunekit.methods.stage import Stage

__all__ = [
    "Budget",
    "BudgetResult",
    "Calib",
    "ChannelKeep",
    "Method",
    "Plan",
    "Pruned",
    "Schedule",
    "ScoringMethod",
    "Stage",
    "Selection",
    "create_method",
    "list_methods",
    "meet",
    "method_class",
    "parse_selection",
    "register_method",
    "resolve_ratios",
    "select_kept",
]
