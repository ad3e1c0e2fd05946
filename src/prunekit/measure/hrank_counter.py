"""HRank's pruned-model counter (`get_flops.py` / `cal_flops_params.py`, specs/hrank.md §5.1), which
produced every FLOPs/params figure of the HRank paper and README.

It counts the *dense* model's convs with only their own removed output filters subtracted: a conv's
input width is never reduced, even when the conv before it lost filters. The one exception is
DenseNet's transition convs, whose input width loses the filters pruned so far in the preceding
block. FLOPs are conv multiply-accumulates (bias free) plus, for each Linear, its parameter count;
params are conv and Linear weights and biases, BN excluded. The true cost of a physically pruned
model is far lower; use `measure.cost` for that and say which counter a number comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from prunekit.measure.cost import cost


@dataclass(frozen=True)
class LegacyCost:
    flops: int
    params: int
    counter: str = "hrank_legacy (output filters only; input widths never reduced)"


def pruned_filters(rate: float, filters: int) -> int:
    """HRank's ``int(cr * n)``: the floor of the float product (0.7 * 12 = 8.399... -> 8)."""
    return int(rate * filters)


def hrank_legacy_count(
    model: nn.Module,
    input_shape: Sequence[int],
    conv_rates: Mapping[str, float],
    legacy_inputs: Mapping[str, Sequence[str]] | None = None,
) -> LegacyCost:
    """Count dense `model` as HRank does after pruning conv c by ``conv_rates[c]`` (absent: 0).
    `legacy_inputs[c]` lists the convs whose pruned filters the counter subtracts from conv c's
    input width (DenseNet transitions)."""
    legacy_inputs = legacy_inputs or {}
    modules = dict(model.named_modules())
    unknown = [name for name in (*conv_rates, *legacy_inputs) if not isinstance(modules.get(name), nn.Conv2d)]
    if unknown:
        raise KeyError(f"not Conv2d layers of the model: {', '.join(unknown)}")
    widths = {name: modules[name].out_channels for name in conv_rates}
    pruned = {name: pruned_filters(rate, widths[name]) for name, rate in conv_rates.items()}
    flops = params = 0
    for row in cost(model, input_shape).layers:
        module = modules[row.name]
        if isinstance(module, nn.Conv2d):
            kept = module.out_channels - pruned.get(row.name, 0)
            inputs = module.in_channels - sum(pruned.get(src, 0) for src in legacy_inputs.get(row.name, ()))
            per_filter = inputs // module.groups * math.prod(module.kernel_size)
            flops += kept * per_filter * math.prod(row.output_shape[1:])
            if row.params:  # first call only: a module called twice has its parameters once
                params += kept * (per_filter + (module.bias is not None))
        elif isinstance(module, nn.Linear):
            # HRank's counter charges a Linear its parameter count, not its MACs.
            flops += row.params
            params += row.params
    return LegacyCost(flops, params)
