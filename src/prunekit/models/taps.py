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

A model that declares no activation taps gets `fallback_activation_taps`: each conv read after the
activation module its output flows into (through a BatchNorm or another norm), where that module runs once
per forward, and on its own output otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import unknown_name
from prunekit.models.probe import evaluating

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


#: Modules whose output is a conv's *activated* maps when the conv's output (or its norm's) flows into them.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
)  # fmt: skip
#: Per-channel modules that may sit between a conv and its activation (conv → BN → ReLU).
NORMS: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.Identity)


@dataclass(frozen=True)
class FallbackTaps:
    """Activation taps found from a model's forward code. `raw`: convs read on their own output (no
    activation module that runs once per forward follows them); `untapped`: convs that run more than once
    per forward or not at all, whose maps cannot be attributed; `traced`: False when the forward could not
    be traced symbolically, in which case every conv is read on its own output."""

    taps: tuple[FeatureTap, ...]
    raw: tuple[str, ...]
    untapped: tuple[str, ...]
    traced: bool


def fallback_activation_taps(model: nn.Module) -> FallbackTaps:
    """One tap per conv for a model that declares none, decided per layer from its forward code.

    The forward is traced symbolically (`torch.fx`), so no input is needed and the data flow, not the
    module registration order, decides: conv → [norm] → activation module gives the activation's output. A
    functional activation (``F.relu``), an activation module reused elsewhere in the forward (hooks could
    not tell its calls apart), or no activation at all (a pre-activation block's residual output, an SE
    gate's input) leave the conv on its own output.
    """
    modules = dict(model.named_modules())
    convs = [name for name, m in modules.items() if isinstance(m, nn.Conv2d)]
    try:
        # In eval mode, as the criteria run the model: branches only taken in training (auxiliary heads)
        # must not get taps that never fire.
        with evaluating(model):
            graph = torch.fx.Tracer().trace(model)
    except Exception:  # data-dependent control flow and the like: the conv outputs are always there
        return FallbackTaps(tuple(FeatureTap(c, c) for c in convs), tuple(convs), (), traced=False)
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    taps: list[FeatureTap] = []
    raw: list[str] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Conv2d):
            continue
        conv = str(node.target)
        if calls[conv] != 1:
            continue
        tapped = _activation_after(node, modules, calls)
        if tapped is None:
            raw.append(conv)
        taps.append(FeatureTap(conv, tapped or conv))
    # Registration order, as the compress_rate entries are listed.
    order = {name: i for i, name in enumerate(convs)}
    taps.sort(key=lambda tap: order[tap.conv])
    tapped_convs = {tap.conv for tap in taps}
    return FallbackTaps(
        tuple(taps),
        tuple(sorted(raw, key=order.__getitem__)),
        tuple(c for c in convs if c not in tapped_convs),
        traced=True,
    )


def _activation_after(
    node: torch.fx.Node, modules: dict[str, nn.Module], calls: Counter[object]
) -> str | None:
    """The activation module reading `node`'s output, directly or through per-channel norms, when it runs
    once per forward; else None."""
    current = node
    while True:
        follower = None
        for user in current.users:
            if user.op == "call_module" and user.args and user.args[0] is current:
                module = modules.get(str(user.target))
                if isinstance(module, NORMS + ACTIVATIONS):
                    follower = user
                    break
        if follower is None:
            return None
        module = modules[str(follower.target)]
        if isinstance(module, ACTIVATIONS):
            return str(follower.target) if calls[follower.target] == 1 else None
        current = follower
