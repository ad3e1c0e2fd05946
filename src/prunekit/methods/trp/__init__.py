"""TRP (trained rank pruning, Xu et al. IJCAI 2020) and its nuclear-norm baseline: `method` registers
``trp`` and ``nuclear``; `projection` holds the batched truncated-SVD step and the rank rules."""

from prunekit.methods.trp.method import TRP, Nuclear, NuclearOptions, TRPOptions
from prunekit.methods.trp.projection import Projection, energy_ranks, project, value_ranks

__all__ = [
    "TRP",
    "Nuclear",
    "NuclearOptions",
    "Projection",
    "TRPOptions",
    "energy_ranks",
    "project",
    "value_ranks",
]
