"""HRank's criterion on the classifier's hidden linear layers, so a uniform ratio or a budget reaches the
same layers for HRank as for every other method.

A hidden unit's output is a 1×1 feature map; after the ReLU that follows it (every zoo model's hidden
linear layers have one) the map's rank is 1 when the unit fires and 0 when it does not, so the average rank
over the calibration images is the fraction of images on which the unit fires. The paper ranks convs only;
its list expressions (`--ratios "[...]"`) keep addressing convs only.

The units are counted in the shared calibration pass (`methods.feature_pass`), by the same hooks as the
convs' maps: `hrank_scores` ranks both in one pass, `linear_ranks` the linears alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.methods.feature_pass import feature_pass
from prunekit.models.taps import FeatureTap


def hidden_linears(model: nn.Module, layers: Iterable[str]) -> list[str]:
    """The Linear layers among `layers` (the prunable ones: the output layer is never among them)."""
    return [name for name in layers if isinstance(model.get_submodule(name), nn.Linear)]


def linear_taps(layers: Iterable[str]) -> list[FeatureTap]:
    """One tap per linear layer on its own (pre-ReLU) output: a positive output is a firing unit."""
    return [FeatureTap(name, name) for name in layers]


def firing_counts(outputs: Tensor) -> Tensor:
    """Rank sum over the batch of each unit's post-ReLU map, from a batch of pre-activations whose last
    dimension holds the units: (B, F) gives 1×1 maps (the images on which a unit fires); a Linear applied
    channels-last to (B, H, W, C) maps (ConvNeXt's MLP) gives an H×W map per unit, ranked as a conv's;
    a (B, T, F) sequence a T×1 map, of rank 1 when the unit fires anywhere."""
    fired = outputs.detach().clamp_min(0)
    if fired.dim() == 2:
        return (fired > 0).sum(0)
    if fired.dim() == 3:
        return (fired > 0).any(1).sum(0)
    if fired.dim() == 4:
        from prunekit.methods.hrank.criterion import feature_map_ranks  # criterion imports this module

        return feature_map_ranks(fired.movedim(-1, 1)).sum(0)
    raise ConfigError(
        f"HRank cannot rank the units of a linear layer whose output has shape {tuple(outputs.shape)}; "
        "leave it out with ratios='<layer>:0'"
    )


def linear_ranks(
    model: nn.Module, calib: Tensor | Iterable[Any], layers: Sequence[str], n_images: int, batch_size: int
) -> dict[str, Tensor]:
    """Average rank of each unit's post-ReLU 1×1 map over the first `n_images` inputs: the fraction of
    images with a positive pre-activation, ``{layer: float32 (out_features,)}``."""
    if not layers:
        return {}
    fired: dict[str, Tensor] = {}

    def count(names: tuple[str, ...], outputs: Tensor) -> None:
        hits = firing_counts(outputs)
        for name in names:
            fired[name] = fired[name] + hits if name in fired else hits

    seen = feature_pass(
        model, calib, linear_taps(layers), count, n_images=n_images, batch_size=batch_size, who="HRank"
    ).images
    return {name: (fired[name].double() / seen).float().cpu() for name in layers if name in fired}
