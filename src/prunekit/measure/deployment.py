"""The deployment form of a model: BatchNorm folded into the preceding convolution, then frozen or compiled.

Latency is measured on this form because eager PyTorch spends ~10-15 µs per operator whatever the
width, so an unfolded eager model blames the pruning method for framework overhead
(specs/landscape.md §8).
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Literal

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import unknown_name
from prunekit.models.empty_layers import EMPTY_TYPES
from prunekit.models.layers import ZeroPadShortcut

DeployMode = Literal["freeze", "compile", "eager"]
DEPLOY_MODES: tuple[str, ...] = ("freeze", "compile", "eager")


class _Tracer(torch.fx.Tracer):
    # The shortcut is kept opaque so folding never depends on how it computes its output.
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (ZeroPadShortcut, *EMPTY_TYPES)) or super().is_leaf_module(
            m, module_qualified_name
        )


def _foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BN's only input is the conv's output and nothing else reads it."""
    # Stricter than `models.probe.batchnorm_after`: folding rewrites the conv, so it must feed nothing else.
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        if modules[node.target].running_mean is None:  # track_running_stats=False: batch statistics
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if not isinstance(modules[src.target], nn.Conv2d) or len(src.users) != 1:
            continue
        # A module called from two places shares its weights between them: folding would change both.
        if calls[node.target] != 1 or calls[src.target] != 1:
            continue
        if _recomputes_weight(modules[src.target]) or _recomputes_weight(modules[node.target]):
            continue
        pairs.append((src.target, node.target))
    return pairs


def _recomputes_weight(module: nn.Module) -> bool:
    # Masks (torch.nn.utils.prune) and parametrizations rebuild `weight` on every call, so an edit to it
    # would be overwritten or land on the wrong tensor; hooks may change inputs or outputs in any way.
    return (
        parametrize.is_parametrized(module) or bool(module._forward_pre_hooks) or bool(module._forward_hooks)
    )


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy in which each BatchNorm2d fed only by a Conv2d is folded into that conv and
    replaced by `nn.Identity`, so module names and the model's own forward are kept.

    The data flow is found by torch.fx tracing. A model that cannot be traced comes back as an unfolded
    eval copy with a warning: never a copy that might compute something else.
    """
    folded = copy.deepcopy(model).eval()
    try:
        pairs = _foldable_pairs(folded)
    except Exception as exc:  # fx fails in many ways (control flow, unsupported ops); all mean "do not fold"
        warnings.warn(
            f"fold_batchnorm: {type(model).__name__} cannot be traced by torch.fx ({exc}); "
            "BatchNorm left unfolded",
            stacklevel=2,
        )
        return folded
    for conv_name, bn_name in pairs:
        _fold_into(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent_name), attr, nn.Identity())
    return folded


def deploy(
    model: nn.Module, example_input: torch.Tensor, mode: DeployMode = "freeze"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """BN-folded `model` in inference form: `torch.jit.freeze(torch.jit.trace(...))`, `torch.compile`,
    or plain eager. `example_input` sets the device (the model is moved there) and the traced shapes."""
    if mode not in DEPLOY_MODES:
        raise unknown_name("deploy mode", mode, DEPLOY_MODES)
    folded = fold_batchnorm(model).to(example_input.device)
    if mode == "eager":
        return folded
    if mode == "compile":
        return torch.compile(folded)
    # TorchScript is deprecated but its frozen graphs are still the fastest CPU form at batch 1
    # (specs/landscape.md §8); the warning would be noise on every measurement.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        return torch.jit.freeze(torch.jit.trace(folded, example_input))
