"""HRank's criterion on the classifier's hidden linear layers, so a uniform ratio or a budget reaches the
same layers for HRank as for every other method.

A hidden unit's output is a 1×1 feature map; after the ReLU that follows it (every zoo model's hidden
linear layers have one) the map's rank is 1 when the unit fires and 0 when it does not, so the average rank
over the calibration images is the fraction of images on which the unit fires. The paper ranks convs only;
its list expressions (`--ratios "[...]"`) keep addressing convs only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def hidden_linears(model: nn.Module, layers: Iterable[str]) -> list[str]:
    """The Linear layers among `layers` (the prunable ones: the output layer is never among them)."""
    return [name for name in layers if isinstance(model.get_submodule(name), nn.Linear)]


def linear_ranks(
    model: nn.Module, calib: Tensor | Iterable[Any], layers: Sequence[str], n_images: int, batch_size: int
) -> dict[str, Tensor]:
    """Average rank of each unit's post-ReLU 1×1 map over the first `n_images` inputs: the fraction of
    images with a positive pre-activation, ``{layer: float32 (out_features,)}``."""
    if not layers:
        return {}
    fired: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def count(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            hits = (output.detach() > 0).sum(0)
            fired[name] = fired[name] + hits if name in fired else hits

        return count

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in layers]
    batches = calib.split(batch_size) if isinstance(calib, Tensor) else calib
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen, was_training = 0, model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                x = batch if isinstance(batch, Tensor) else batch[0]  # (images, labels) from a loader
                x = x[: n_images - seen].to(device)
                model(x)
                seen += len(x)
                if seen >= n_images:
                    break
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: (fired[name].double() / max(seen, 1)).float().cpu() for name in layers if name in fired}
