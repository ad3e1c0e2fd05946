"""Torch-Pruning's own pruners as methods, so `prunekit compare` shows prunekit beside the standard tool.

Each method runs Torch-Pruning's `MetaPruner` with one of its importance criteria on a throwaway copy and
reads back, from the pruner's history, which output channels it removed; prunekit's surgery then removes
exactly those channels from the real model. The selection is Torch-Pruning's own (its importance, its
group reduction and normalisation, its per-group or global allocation); the model that comes back is
prunekit's, so it is validated, recorded in the edit history and saved like every other pruned model.
Torch-Pruning is given prunekit's pruner for option-A shortcuts (without it, it prunes a residual stage
and leaves the shortcut's index buffers stale: a silently broken model).

- ``tp-magnitude``: `MagnitudeImportance(p=1)`, the L1 filter norm of the group;
- ``tp-group-norm``: `GroupMagnitudeImportance(p=2)`, DepGraph's group norm (without its sparse training);
- ``tp-bn-scale``: `BNScaleImportance`, |γ| of the BatchNorms in the group (Network Slimming's criterion);
- ``tp-taylor``: `TaylorImportance`, |w · ∂L/∂w| with L the cross-entropy of the calibration images
  against the dense model's own predictions (calibration images come without labels).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods.base import (
    Calib,
    ChannelKeep,
    Method,
    Plan,
    Schedule,
    example_input,
    register_method,
)
from prunekit.methods.selection import Selection
from prunekit.models.probe import evaluating
from prunekit.surgery.graph import CUSTOMIZED_PRUNERS, PRUNABLE_TYPES, prunable_layers


@dataclass
class TorchPruningOptions:
    ratio: float = field(
        default=0.5,
        metadata={"help": "Torch-Pruning's pruning_ratio: the share of each group's channels removed"},
    )
    global_pruning: bool = field(
        default=False,
        metadata={"help": "rank all groups together (Torch-Pruning's global_pruning) instead of per group"},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")


class TorchPruningMethod(Method):
    """Base of the Torch-Pruning rows: subclasses name the importance."""

    Options: ClassVar[type] = TorchPruningOptions
    options: TorchPruningOptions
    knob = "ratio"
    knob_range = (0.0, 0.95)
    schedule = Schedule(finetune_epochs=10)
    importance: ClassVar[Callable[[], Any]]
    needs_gradients: ClassVar[bool] = False

    def resolve_selection(self, selection: Selection | None) -> Selection | None:
        if selection is not None and selection.uniform is not None and selection.budget is None:
            self.options = dataclasses.replace(self.options, ratio=selection.uniform)
            return None
        return super().resolve_selection(selection)

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        example = example_input(calib, self.name)
        if self.options.ratio == 0:
            return {}
        trial = copy.deepcopy(model).eval()
        eligible = {layer.name for layer in prunable_layers(model, example)}
        ignored = [
            m for name, m in trial.named_modules() if isinstance(m, PRUNABLE_TYPES) and name not in eligible
        ]
        # A batch of two, as prunekit's own tracing (torch's CPU conv records a squeeze at batch one).
        traced = example.expand(2, *example.shape[1:]) if example.shape[0] == 1 else example
        try:
            # building its graph can fail too (torch-pruning 1.6 sums a CSPNet concat's widths with a None)
            pruner = tp.pruner.MetaPruner(
                trial,
                traced,
                importance=type(self).importance(),
                pruning_ratio=self.options.ratio,
                global_pruning=self.options.global_pruning,
                ignored_layers=ignored,
                customized_pruners=dict(CUSTOMIZED_PRUNERS),
            )
        except RuntimeError:
            raise  # the model itself failed on the example input: its own error says why
        except Exception as exc:  # Torch-Pruning's own failure: say whose it is
            raise PrunekitError(f"Torch-Pruning's {self.name} pruner failed on this model: {exc}") from exc
        if self.needs_gradients:
            _pseudo_label_backward(trial, calib)
        try:
            pruner.step()
        except Exception as exc:  # Torch-Pruning's own failure: say whose it is
            raise PrunekitError(f"Torch-Pruning's {self.name} pruner failed on this model: {exc}") from exc
        widths = {
            name: m.weight.shape[0] for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)
        }
        plan: ChannelKeep = {}
        for name, out_channels, removed in pruner.pruning_history():
            if out_channels and name in widths:
                gone = set(int(i) for i in removed)
                plan[name] = [i for i in range(widths[name]) if i not in gone]
        return plan


def _pseudo_label_backward(model: nn.Module, calib: Calib | None) -> None:
    """Gradients for Taylor importance: cross-entropy of the calibration images against the model's own
    predictions (the images come without labels)."""
    if calib is None or len(calib) < 2:
        raise ConfigError("tp-taylor needs calibration images (at least 2) for its gradients")
    model.zero_grad()
    with evaluating(model), torch.enable_grad():
        logits = model(calib)
        labels = logits.detach().argmax(1)
        torch.nn.functional.cross_entropy(logits, labels).backward()


@register_method
class TorchPruningMagnitude(TorchPruningMethod):
    """Torch-Pruning's magnitude pruner (L1 norm of each group), uniform per group, for comparison."""

    name = "tp-magnitude"
    importance = staticmethod(lambda: tp.importance.MagnitudeImportance(p=1))


@register_method
class TorchPruningGroupNorm(TorchPruningMethod):
    """Torch-Pruning's DepGraph group-norm pruner (L2 norm over each coupled group), for comparison."""

    name = "tp-group-norm"
    importance = staticmethod(lambda: tp.importance.GroupMagnitudeImportance(p=2))


@register_method
class TorchPruningBNScale(TorchPruningMethod):
    """Torch-Pruning's BN-scale pruner (|γ| of each group's BatchNorms), for comparison."""

    name = "tp-bn-scale"
    importance = staticmethod(tp.importance.BNScaleImportance)


@register_method
class TorchPruningTaylor(TorchPruningMethod):
    """Torch-Pruning's Taylor pruner (|w · grad| on the calibration images), for comparison."""

    name = "tp-taylor"
    importance = staticmethod(tp.importance.TaylorImportance)
    needs_gradients = True
