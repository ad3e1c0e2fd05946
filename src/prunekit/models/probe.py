"""Running a model once to observe it: the forward that hooks (cost counting, selection, tracing) rely on."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def probe(model: nn.Module, example: torch.Tensor, hooks: Iterable[RemovableHandle] = ()) -> torch.Tensor:
    """One forward of `example` in eval mode without autograd; afterwards `hooks` are removed and every
    module's train/eval flag is restored, whether the forward succeeded or not."""
    handles = list(hooks)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return model(example)
    finally:
        for m, training in modes.items():
            m.training = training
        for handle in handles:
            handle.remove()
