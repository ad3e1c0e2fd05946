"""Random filter pruning: the control every criterion must beat. Deterministic for a given seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunekit.methods.base import Calib, Plan, ScoringMethod, ScoringOptions, register_method


@dataclass
class RandomOptions(ScoringOptions):
    seed: int = field(default=0, metadata={"help": "seed of the random choice"})


@register_method
class RandomFilters(ScoringMethod):
    """Each layer keeps a uniformly random subset; one generator walks the layers in execution order."""

    name = "random"
    Options = RandomOptions
    options: RandomOptions

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        self._generator = torch.Generator().manual_seed(self.options.seed)
        return super().plan(model, calib)

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor:
        n = model.get_submodule(layer).weight.shape[0]
        return torch.rand(n, generator=self._generator)
