"""Per-layer sparsity of conv and linear layers, after DeepHoyer's `print_nonzeros`.

Convention (stated in every output): layers are the conv (1-3 d) and linear modules. A row counts the
exact zeros of the layer's weight; its bias is counted in separate columns. The totals count weights
AND biases, as DeepHoyer's MNIST report does (its "alive / pruned / total / compression rate" line);
weight-only totals (its CIFAR report) are given beside them. BatchNorm and other parameters are not
counted: their zeros remove no multiply-accumulates.

Structure, read off the weight as DeepHoyer does: a *nonzero filter* is an output channel (linear: row)
with any nonzero weight, a *nonzero input channel* an input channel (linear: column) with any nonzero
weight into it. A filter with zero weights but a nonzero bias still counts as zero: it outputs a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from rich.table import Table
from torch import Tensor, nn

CONVENTION = (
    "conv+linear layers; per-layer counts are weights (bias in its own columns); totals include biases; "
    "BN excluded; filters/input channels are alive if any weight in them is nonzero"
)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    kind: str  # "conv" or "linear"
    shape: tuple[int, ...]
    nonzero: int
    total: int
    bias_nonzero: int
    bias_total: int
    nonzero_filters: int
    filters: int
    nonzero_in_channels: int
    in_channels: int

    @property
    def pruned_pct(self) -> float:
        """Share of the weight's elements that are exactly zero, in percent."""
        return 100.0 * (self.total - self.nonzero) / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "nonzero": self.nonzero,
            "total": self.total,
            "pruned_pct": self.pruned_pct,
            "bias_nonzero": self.bias_nonzero,
            "bias_total": self.bias_total,
            "nonzero_filters": self.nonzero_filters,
            "filters": self.filters,
            "nonzero_in_channels": self.nonzero_in_channels,
            "in_channels": self.in_channels,
        }


def _alive_inputs(weight: Tensor, groups: int) -> Tensor:
    """Per input channel: does any weight read it? Grouped convs hold (n, c/g, ...) weights, where
    input channel g·(c/g) + j is read only by the filters of group g at position j."""
    n, per_group = weight.shape[0], weight.shape[1]
    nz = weight.ne(0).reshape(groups, n // groups, per_group, -1)
    return nz.any(dim=3).any(dim=1).reshape(groups * per_group)


def _layer(name: str, module: nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) -> LayerSparsity:
    weight = module.weight.detach()
    bias = module.bias.detach() if module.bias is not None else None
    groups = module.groups if isinstance(module, _CONVS) else 1
    return LayerSparsity(
        name=name,
        kind="linear" if isinstance(module, nn.Linear) else "conv",
        shape=tuple(weight.shape),
        nonzero=int(torch.count_nonzero(weight)),
        total=weight.numel(),
        bias_nonzero=int(torch.count_nonzero(bias)) if bias is not None else 0,
        bias_total=bias.numel() if bias is not None else 0,
        nonzero_filters=int(weight.flatten(1).ne(0).any(dim=1).sum()),
        filters=weight.shape[0],
        nonzero_in_channels=int(_alive_inputs(weight, groups).sum()),
        in_channels=weight.shape[1] * groups,
    )


@dataclass(frozen=True)
class SparsityReport:
    layers: tuple[LayerSparsity, ...]

    @property
    def weight_nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    @property
    def weight_total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def nonzero(self) -> int:
        """Nonzero weights and biases ("alive" in DeepHoyer)."""
        return self.weight_nonzero + sum(layer.bias_nonzero for layer in self.layers)

    @property
    def total(self) -> int:
        """All weights and biases of the counted layers."""
        return self.weight_total + sum(layer.bias_total for layer in self.layers)

    @property
    def pruned(self) -> int:
        return self.total - self.nonzero

    @property
    def pruned_pct(self) -> float:
        return 100.0 * self.pruned / self.total if self.total else 0.0

    @property
    def compression(self) -> float | None:
        """total / nonzero, weights and biases; None when nothing is left (the rate is unbounded)."""
        return self.total / self.nonzero if self.nonzero else None

    @property
    def channel_pair_sparsity(self) -> float:
        """DeepHoyer's ImageNet "str": 1 − Σ nz_in·nz_out / Σ in·out over the layers, the share of
        (input channel, filter) pairs that dropping dead channels and filters would remove."""
        alive = sum(layer.nonzero_in_channels * layer.nonzero_filters for layer in self.layers)
        full = sum(layer.in_channels * layer.filters for layer in self.layers)
        return 1.0 - alive / full if full else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": CONVENTION,
            "layers": [layer.to_dict() for layer in self.layers],
            "nonzero": self.nonzero,
            "total": self.total,
            "pruned": self.pruned,
            "pruned_pct": self.pruned_pct,
            "compression": self.compression,
            "weight_nonzero": self.weight_nonzero,
            "weight_total": self.weight_total,
            "channel_pair_sparsity": self.channel_pair_sparsity,
        }

    def table(self) -> Table:
        rate = f"{self.compression:.2f}x" if self.compression is not None else "unbounded (all zero)"
        table = Table(
            title="Sparsity (exact zeros)",
            caption=(
                f"alive {self.nonzero:,} / total {self.total:,} (weights + biases), pruned {self.pruned:,} "
                f"({self.pruned_pct:.2f}%), compression {rate}; {CONVENTION}"
            ),
        )
        for header in ("layer", "shape", "nonzero", "total", "pruned", "bias nz", "filters", "in-channels"):
            table.add_column(header, justify="left" if header in ("layer", "shape") else "right")
        for layer in self.layers:
            table.add_row(
                layer.name,
                "×".join(map(str, layer.shape)),
                f"{layer.nonzero:,}",
                f"{layer.total:,}",
                f"{layer.pruned_pct:.2f}%",
                f"{layer.bias_nonzero}/{layer.bias_total}" if layer.bias_total else "-",
                f"{layer.nonzero_filters}/{layer.filters}",
                f"{layer.nonzero_in_channels}/{layer.in_channels}",
            )
        weight_pct = 100.0 * (1 - self.weight_nonzero / self.weight_total) if self.weight_total else 0.0
        table.add_section()
        table.add_row(
            "total (weights)", "", f"{self.weight_nonzero:,}", f"{self.weight_total:,}", f"{weight_pct:.2f}%"
        )
        return table


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Count the exact zeros of every conv and linear layer of `model`, in `named_modules` order."""
    return SparsityReport(
        tuple(
            _layer(name, module)
            for name, module in model.named_modules()
            if isinstance(module, (*_CONVS, nn.Linear))
        )
    )
