"""TPP (trainability-preserving pruning) and GReg-1/2: growing-penalty filter pruning (specs/tpp.md).

`selection` picks the filters (§1), `regularizers` holds the penalty terms (§2.2–§2.3), `schedule` the
growing λ (§2.5–§2.6), `method` the three registered methods."""

from prunekit.methods.tpp.method import TPP, GReg1, GReg1Options, GReg2, GReg2Options, TPPOptions
from prunekit.methods.tpp.regularizers import entry_l2, filter_l2, gram_term
from prunekit.methods.tpp.schedule import Clock, Ramp
from prunekit.methods.tpp.selection import allocate, pick, tpp_count

__all__ = [
    "TPP",
    "Clock",
    "GReg1",
    "GReg1Options",
    "GReg2",
    "GReg2Options",
    "Ramp",
    "TPPOptions",
    "allocate",
    "entry_l2",
    "filter_l2",
    "gram_term",
    "pick",
    "tpp_count",
]
