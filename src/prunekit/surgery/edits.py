"""The edit records: what each physical edit stores on the model it produces, in ``model.prunekit_edits``
(a JSON list), and how a stored list is read back.

- `ChannelEdit` — `surgery.channels.apply` kept these output channels (``{layer: kept indices}``), traced
  on an input of shape ``(1, *input_shape)``;
- `LowRankEdit` — `surgery.lowrank.decompose` replaced these convs (``{layer: [scheme, rank]}``);
- `MaskEdit` — `record_masks` froze element-wise masks on these parameters. The masks themselves are
  state, not structure: they live in ``model.prunekit_masks`` and a model file stores them as tensors.

The surgeries record through this module; `surgery.history.replay` re-applies a parsed list with them.

Masks are recorded explicitly with `record_masks`, not by `masks.attach`/`masks.fold`: those run again on
every fine-tune (and on trial masks during a search), and recording there would repeat edits or store
masks nobody meant to keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from prunekit.errors import CheckpointError
from prunekit.surgery.masks import MaskSet, fold

EDITS_ATTR = "prunekit_edits"
MASKS_ATTR = "prunekit_masks"


class _Malformed(Exception):
    """Raised by `from_json`; `parse` turns it into a CheckpointError naming the edit's position."""


@dataclass(frozen=True)
class ChannelEdit:
    """Output channels kept per Conv2d/Linear layer, indexed in the model as it was before this edit."""

    kind: ClassVar[str] = "channels"
    plan: dict[str, list[int]]
    input_shape: tuple[int, ...]  # one example, without the batch dimension

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "plan": {name: list(kept) for name, kept in self.plan.items()},
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChannelEdit:
        plan = _mapping(data, "plan")
        for name, kept in plan.items():
            if not _int_list(kept):
                raise _Malformed(f"kept channels of layer {name!r} must be a list of ints, got {kept!r}")
        shape = data.get("input_shape")
        if not _int_list(shape) or not shape or min(shape) < 1:
            raise _Malformed(f"'input_shape' must be a non-empty list of positive ints, got {shape!r}")
        return cls({name: list(kept) for name, kept in plan.items()}, tuple(shape))


@dataclass(frozen=True)
class LowRankEdit:
    """Convs replaced by a `LowRankConv2d` of the given scheme and rank."""

    kind: ClassVar[str] = "lowrank"
    plan: dict[str, tuple[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "plan": {name: [scheme, rank] for name, (scheme, rank) in self.plan.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LowRankEdit:
        plan = _mapping(data, "plan")
        for name, entry in plan.items():
            ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            if not ok or not _int_list(entry[1:]):
                raise _Malformed(f"entry for layer {name!r} must be [scheme, rank], got {entry!r}")
        return cls({name: (scheme, rank) for name, (scheme, rank) in plan.items()})


@dataclass(frozen=True)
class MaskEdit:
    """Element-wise masks were frozen on these parameters (the masks are in ``model.prunekit_masks``)."""

    kind: ClassVar[str] = "masks"
    params: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": list(self.params)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MaskEdit:
        params = data.get("params")
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise _Malformed(f"'params' must be a list of parameter names, got {params!r}")
        return cls(tuple(params))


Edit = ChannelEdit | LowRankEdit | MaskEdit
EDIT_KINDS: dict[str, type[ChannelEdit] | type[LowRankEdit] | type[MaskEdit]] = {
    cls.kind: cls for cls in (ChannelEdit, LowRankEdit, MaskEdit)
}


def record(model: nn.Module, edit: Edit) -> None:
    """Append `edit` to ``model.prunekit_edits`` (created if missing, so user models get a history too).

    Called on the copy an edit produced: `copy.deepcopy` copies the module's ``__dict__``, so the copy
    already holds its own list with every earlier edit. A structural edit also refits the model's masks.
    """
    edits = getattr(model, EDITS_ATTR, None)
    if edits is None:
        edits = []
        setattr(model, EDITS_ATTR, edits)
    edits.append(edit.to_json())
    if not isinstance(edit, MaskEdit):
        _refit_masks(model)


def record_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Fold `masks` into the weights of `model` (in place), keep them in ``model.prunekit_masks``
    (combined with masks it already has) and record a `MaskEdit`, so a model file stores them and a
    fine-tune can `attach` them again. Returns `model`."""
    masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    fold(model, masks)  # checks every name and shape before changing anything
    current = getattr(model, MASKS_ATTR, None)
    setattr(model, MASKS_ATTR, MaskSet(current) & masks if current else masks)
    record(model, MaskEdit(tuple(masks)))
    return model


def parse(edits: object) -> list[Edit]:
    """The typed edits of a JSON history; refuses unknown kinds and malformed edits by position."""
    if not isinstance(edits, list):
        raise CheckpointError(f"edit history must be a list, got {type(edits).__name__}")
    parsed: list[Edit] = []
    for index, data in enumerate(edits):
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in EDIT_KINDS:
            what = f"unknown kind {kind!r}" if isinstance(data, dict) else f"a {type(data).__name__}"
            raise CheckpointError(
                f"edit {index} has {what}; known kinds: {', '.join(sorted(EDIT_KINDS))} "
                "(a file written by a newer prunekit?)"
            )
        try:
            parsed.append(EDIT_KINDS[kind].from_json(data))
        except _Malformed as exc:
            raise CheckpointError(f"edit {index} ({kind}) is malformed: {exc}") from None
    return parsed


def _refit_masks(model: nn.Module) -> None:
    """Keep ``prunekit_masks`` valid after a structural edit. Surgery only removes slices, so a parameter
    whose shape did not change kept its mask exactly. A narrowed one keeps its surviving zeros, as
    DeepHoyer does (`record_masks` folded the masks, so masked elements are zero); a parameter that is
    gone (a decomposed conv's weight) loses its mask, since the new factors are dense by construction."""
    masks = getattr(model, MASKS_ATTR, None)
    if not masks:
        return
    params = dict(model.named_parameters())
    refit = {
        name: mask if mask.shape == params[name].shape else params[name].detach() != 0
        for name, mask in masks.items()
        if name in params
    }
    setattr(model, MASKS_ATTR, MaskSet(refit))


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Malformed(f"{key!r} must be an object keyed by layer name, got {value!r}")
    return value


def _int_list(value: object) -> bool:
    # bool is an int subclass, but True as a channel index or rank is a corrupt file, not a 1.
    return isinstance(value, list) and all(type(v) is int for v in value)
