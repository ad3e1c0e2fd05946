"""The edit history: a pruned model is its base architecture plus the ordered edits applied since.

Every physical edit records itself on the model it produces, in ``model.prunekit_edits``; the records
(`ChannelEdit`, `LowRankEdit`, `MaskEdit`), `record`, `record_masks` and `parse` live in
`surgery.edits`, which the surgeries import, and are importable from here too.

`replay` re-applies a history to a freshly built base. It only has to reproduce the *shapes*: the weights
are then overwritten by a strict load, so a channel edit replays its surgery on whatever weights the base
has and a low-rank edit builds empty `LowRankConv2d` shells instead of running an SVD.

Imports go one way: `edits` ← `channels`, `lowrank` ← `history`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, SurgeryError
from prunekit.surgery.channels import apply
from prunekit.surgery.edits import (
    EDIT_KINDS,
    EDITS_ATTR,
    MASKS_ATTR,
    ChannelEdit,
    Edit,
    LowRankEdit,
    MaskEdit,
    parse,
    record,
    record_masks,
)
from prunekit.surgery.lowrank import LowRankConv2d

__all__ = [
    "EDITS_ATTR",
    "EDIT_KINDS",
    "MASKS_ATTR",
    "ChannelEdit",
    "Edit",
    "LowRankEdit",
    "MaskEdit",
    "parse",
    "record",
    "record_masks",
    "replay",
]


def replay(model: nn.Module, edits: object) -> nn.Module:
    """Re-apply the JSON history `edits` to the base `model`, in order; returns the edited model (channel
    edits return a copy) with ``prunekit_edits`` equal to `edits`. Every edit is parsed before any runs."""
    parsed = parse(edits)
    if getattr(model, EDITS_ATTR, None):
        raise CheckpointError(
            f"the base model already carries {len(getattr(model, EDITS_ATTR))} edits; replay needs the "
            "unedited architecture"
        )
    for index, edit in enumerate(parsed):
        try:
            model = _REPLAY[type(edit)](model, edit)
        except SurgeryError as exc:
            raise CheckpointError(
                f"the file's edits do not fit its architecture: edit {index} ({edit.kind}): {exc}"
            ) from None
    return model


def _replay_channels(model: nn.Module, edit: ChannelEdit) -> nn.Module:
    example = torch.zeros(1, *edit.input_shape, device=_device(model))
    try:
        return apply(model, edit.plan, example)  # records the edit on the copy it returns
    except RuntimeError as exc:  # tracing the base on an input of the wrong shape
        raise SurgeryError(f"the model does not run on an input of shape {edit.input_shape}: {exc}") from None


def _replay_lowrank(model: nn.Module, edit: LowRankEdit) -> nn.Module:
    modules = dict(model.named_modules())
    for name in edit.plan:
        if not name or name not in modules:
            raise SurgeryError(f"no layer named {name!r} to decompose")
    for name, (scheme, rank) in edit.plan.items():
        try:
            shell = LowRankConv2d.shaped_like(modules[name], scheme, rank, name=name)
        except ConfigError as exc:  # an unknown scheme
            raise SurgeryError(str(exc)) from None
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, shell)
    record(model, edit)
    return model


def _replay_masks(model: nn.Module, edit: MaskEdit) -> nn.Module:
    # Nothing changes shape; the masks come from the file. Still check that the parameters exist at this
    # point of the history, so a history that names the wrong ones is refused.
    named = dict(model.named_parameters())
    missing = [p for p in edit.params if p not in named]
    if missing:
        raise SurgeryError(f"masked parameters {missing} are not in the model")
    record(model, edit)
    return model


_REPLAY: dict[type, Callable[[nn.Module, Any], nn.Module]] = {
    ChannelEdit: _replay_channels,
    LowRankEdit: _replay_lowrank,
    MaskEdit: _replay_masks,
}


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
