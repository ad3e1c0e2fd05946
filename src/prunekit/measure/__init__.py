"""Measurements of a model: parameters and MACs under one stated convention, the papers' counters,
deployed-form latency and sparsity."""

from prunekit.measure.conventions import (
    COUNTERS,
    Counter,
    counter,
    flops_2x,
    hrank_flops,
    hrank_params,
    thop_flops,
    thop_params,
)
from prunekit.measure.cost import CONVENTION, Cost, LayerCost, cost
from prunekit.measure.deployment import deploy, fold_batchnorm
from prunekit.measure.sparsity import LayerSparsity, SparsityReport, sparsity_report
from prunekit.measure.timing import (
    LatencyResult,
    LatencyStats,
    Speedup,
    compare_latency,
    latency,
    speedup,
)

__all__ = [
    "CONVENTION",
    "COUNTERS",
    "Cost",
    "Counter",
    "LatencyResult",
    "LatencyStats",
    "LayerCost",
    "LayerSparsity",
    "SparsityReport",
    "Speedup",
    "compare_latency",
    "cost",
    "counter",
    "deploy",
    "fold_batchnorm",
    "flops_2x",
    "hrank_flops",
    "hrank_params",
    "latency",
    "sparsity_report",
    "speedup",
    "thop_flops",
    "thop_params",
]
