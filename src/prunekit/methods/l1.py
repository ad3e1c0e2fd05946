"""L1-norm filter pruning (Li et al., ICLR 2017): remove the filters with the smallest sum of |w|."""

from __future__ import annotations

from torch import Tensor, nn

from prunekit.methods.base import Calib, ScoringMethod, layer_weight, register_method


@register_method
class L1Norm(ScoringMethod):
    """One-shot on the trained weights, per layer, at the ratios of `rates` (specs/tpp.md §6.1)."""

    name = "l1"

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor:
        return layer_weight(model, layer).abs().sum(1)
