"""What a method asks the surgery to do: a tagged union of plan kinds, dispatched by `apply`.

- `ChannelPlan` (a plain mapping ``{layer: kept output indices}``): channels removed, coupled layers follow;
- `LowRankPlan` (``{conv: (scheme, rank)}``): each conv replaced by its `LowRankConv2d` factorisation;
- `MaskPlan` (``{parameter: bool mask}``): element-wise or group zeros kept in the weights and recorded
  on the model, so fine-tuning re-attaches them and the model file stores them.

A channel plan stays a plain mapping (the form every method and test has always used); the two other
kinds are small frozen dataclasses whose `kind` tags them. Every kind records its edit in the model's
history (`surgery.history`), so `prunekit.load` rebuilds the result from the base architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.surgery.channels import ChannelPlan
from prunekit.surgery.channels import apply as apply_channels
from prunekit.surgery.edits import record_masks
from prunekit.surgery.lowrank import decompose
from prunekit.surgery.masks import MaskSet

PlanKind = Literal["channels", "low_rank", "masks"]


@dataclass(frozen=True)
class LowRankPlan:
    """``ranks[conv] = (scheme, rank)``: factorise each named conv (schemes of `surgery.lowrank`)."""

    ranks: Mapping[str, tuple[str, int]]
    kind: ClassVar[PlanKind] = "low_rank"


@dataclass(frozen=True)
class MaskPlan:
    """``masks[parameter] = bool tensor`` (True keeps): zeros that stay zero while fine-tuning."""

    masks: Mapping[str, Tensor]
    kind: ClassVar[PlanKind] = "masks"


Plan: TypeAlias = ChannelPlan | LowRankPlan | MaskPlan


def plan_kind(plan: object) -> PlanKind:
    """The tag of `plan`; refuses anything that is not one of the three kinds."""
    if isinstance(plan, LowRankPlan | MaskPlan):
        return plan.kind
    if isinstance(plan, Mapping):
        return "channels"
    raise ConfigError(
        f"a plan must be a channel mapping {{layer: kept indices}}, a LowRankPlan or a MaskPlan; "
        f"got {type(plan).__name__}"
    )


def apply(model: nn.Module, plan: Plan, example_input: Tensor) -> nn.Module:
    """A copy of `model` with `plan` carried out (`model` itself is never modified). Channel plans are
    validated on `example_input` by the channel surgery; low-rank and mask plans check every entry before
    building anything."""
    kind = plan_kind(plan)
    if kind == "channels":
        return apply_channels(model, plan, example_input)  # type: ignore[arg-type]
    if kind == "low_rank":
        return decompose(model, plan.ranks)  # type: ignore[union-attr]
    masks = plan.masks if isinstance(plan.masks, MaskSet) else MaskSet(plan.masks)  # type: ignore[union-attr]
    with torch.no_grad():
        return record_masks(copy.deepcopy(model), masks)
