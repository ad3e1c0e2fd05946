"""Feature-map taps: where each conv's feature maps come out of a zoo model (timm's `feature_info` idea).

Methods that score a conv's filters by its feature maps (HRank's ranks, the redundancy graph's hashes)
hook a module's forward output. Which module, and which channels of it, is a fact about the architecture,
so the zoo states it once and every method reads it here:

- ``kind="activation"``: the conv's *activated* maps, where HRank's released code hooks them
  (specs/hrank.md §1.2): after the conv's BN-ReLU, sometimes after the max-pool that follows it or after
  the residual add, and a channel slice where a concat merges several convs' outputs. A zoo class states
  these in its ``activation_taps()`` method; a user model may define the same method to declare its own.
- ``kind="conv"``: the raw conv output, before BN and ReLU (the redundancy graph, specs/redundancy_graph.md
  §1.1): the conv module itself, for every ``nn.Conv2d`` of any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from prunekit.errors import unknown_name

#: Which tensor a tap reads: the conv's activated maps (HRank's hooks) or its raw output.
TapKind = Literal["activation", "conv"]
TAP_KINDS: tuple[TapKind, ...] = ("activation", "conv")


@dataclass(frozen=True)
class FeatureTap:
    """Conv `conv`'s feature maps are channels ``[start:stop]`` of the forward output of module `module`
    (both are names from ``model.named_modules()``). Several convs may share one tap, e.g. a ResNet
    downsample conv and the last conv of its block, whose outputs are added before the ReLU."""

    conv: str
    module: str
    start: int = 0
    stop: int | None = None


def feature_taps(model: nn.Module, kind: TapKind = "activation") -> tuple[FeatureTap, ...] | None:
    """The taps of `model`'s convs.

    ``kind="activation"`` gives what the model declares in ``activation_taps()`` (only the convs HRank's
    code ranks; e.g. VGG-16's last conv and GoogLeNet's 1×1 reductions have none), or None for a model
    that declares nothing, so the caller applies its own fallback. ``kind="conv"`` gives one tap per
    ``nn.Conv2d`` on the conv itself, in registration order, for any model.
    """
    if kind == "conv":
        return tuple(FeatureTap(name, name) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if kind != "activation":
        raise unknown_name("feature tap kind", kind, TAP_KINDS)
    declared = getattr(model, "activation_taps", None)
    return tuple(declared()) if callable(declared) else None
