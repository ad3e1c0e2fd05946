"""Give the layers a cut left with no channels on one side their empty classes (`models.empty_layers`)."""

from __future__ import annotations

from torch import nn

from prunekit.models.empty_layers import EMPTY_TYPES, EmptyBatchNorm2d, EmptyConv2d, EmptyLinear


def replace_emptied(model: nn.Module) -> list[str]:
    """Give every Conv2d/Linear/BatchNorm2d left with zero channels on a side its empty class, in place;
    returns their names."""
    changed = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d and (module.out_channels == 0 or module.in_channels == 0):
            module.__class__ = EmptyConv2d
        elif type(module) is nn.Linear and (module.out_features == 0 or module.in_features == 0):
            module.__class__ = EmptyLinear
        elif type(module) is nn.BatchNorm2d and module.num_features == 0:
            module.__class__ = EmptyBatchNorm2d
        else:
            continue
        changed.append(name)
    return changed


def is_empty(module: nn.Module) -> bool:
    return isinstance(module, EMPTY_TYPES)
