"""Pruning methods behind one protocol: ``create_method(name, **options)``, ``list_methods()``."""

from prunekit.methods import deephoyer, fpgm, hrank, l1, random_filters, slimming  # noqa: F401  (registration)
from prunekit.methods.base import (
    Calib,
    Method,
    Plan,
    ScoringMethod,
    create_method,
    list_methods,
    method_class,
    register_method,
    select_kept,
)
from prunekit.methods.selection import Budget, BudgetResult, Selection, parse_selection, resolve_ratios

__all__ = [
    "Budget",
    "BudgetResult",
    "Calib",
    "Method",
    "Plan",
    "ScoringMethod",
    "Selection",
    "create_method",
    "list_methods",
    "method_class",
    "parse_selection",
    "register_method",
    "resolve_ratios",
    "select_kept",
]
