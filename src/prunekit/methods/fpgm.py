"""FPGM (He et al., CVPR 2019): remove the filters nearest the layer's geometric median.

A filter whose summed Euclidean distance to all other filters of its layer is smallest is the best
represented by the others, hence the most redundant (specs/tpp.md §6.7, "FPGM-only" variant).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunekit.methods.base import Calib, ScoringMethod, layer_weight, register_method


@register_method
class FPGM(ScoringMethod):
    name = "fpgm"

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor:
        # float64: the distance sums of near-duplicate filters differ in low digits and decide the ranking.
        weight = layer_weight(model, layer).double()
        return torch.cdist(weight, weight).sum(1)
