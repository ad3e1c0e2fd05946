"""Model files: one `.safetensors` file holding the weights and JSON metadata, never a pickle.

The metadata records how to rebuild the model: the zoo architecture and its arguments
(`model.prunekit_arch`) and the ordered edits applied since (`model.prunekit_edits`: channel removals,
masks, decompositions; see `surgery.history`). `load` rebuilds the base, replays the edits, then loads the
weights strictly, so a file whose metadata and tensors disagree is refused instead of half-loaded.

Element-wise masks (`model.prunekit_masks`) are stored as bool tensors named ``MASK_PREFIX + param`` in
the same file; the prefix cannot be a state_dict key (``save`` checks), so `load` can split them off before
the strict load. A model without `prunekit_arch` (a user's own class) is saved the same way with
``arch: null``; loading it needs its unedited base instance, ``load(path, model=MyNet())``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from prunekit.errors import CheckpointError

if TYPE_CHECKING:
    from prunekit.surgery.masks import MaskSet

FORMAT = "prunekit.model/1"
MASK_PREFIX = "__prunekit_mask__."
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # PROTO opcode + version


def save(model: nn.Module, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None) -> Path:
    """Write `model` (weights, edit history, masks) atomically to `path`. `info` (accuracy, MACs, ...) is
    stored as JSON beside the weights."""
    from prunekit import __version__

    metadata = {
        "format": FORMAT,
        "prunekit_version": __version__,
        "arch": json.dumps(getattr(model, "prunekit_arch", None)),
        "edits": json.dumps(getattr(model, "prunekit_edits", [])),
        "info": json.dumps(info or {}),
    }
    # safetensors refuses aliased storage and non-contiguous views; copies are cheap next to the I/O.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    clashing = [k for k in tensors if k.startswith(MASK_PREFIX)]
    if clashing:
        raise CheckpointError(f"state_dict keys {clashing[:3]} use the reserved prefix {MASK_PREFIX!r}")
    tensors.update(_mask_tensors(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded metadata of a prunekit model file (arch, edits, info, versions)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}")
    raw = _read_header_metadata(path)
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a prunekit model (format {raw.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        return {
            "format": raw["format"],
            "prunekit_version": raw.get("prunekit_version", "?"),
            "arch": json.loads(raw["arch"]),
            "edits": json.loads(raw.get("edits", "[]")),
            "info": json.loads(raw.get("info", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt prunekit metadata ({exc})") from None


def load(
    path: str | os.PathLike[str], *, model: nn.Module | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the model stored at `path`: its base architecture (or a deep copy of the unedited `model`,
    for user classes the zoo cannot build), then its edits, then strictly its weights and masks."""
    meta = read_metadata(path)
    base = _base_model(path, meta["arch"], model)
    if meta["edits"]:
        from prunekit.surgery.history import replay  # edits live with the surgery that made them

        base = replay(base, meta["edits"])
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None
    masks = {k[len(MASK_PREFIX) :]: tensors.pop(k) for k in list(tensors) if k.startswith(MASK_PREFIX)}
    try:
        base.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the model its metadata describes:\n{exc}"
        ) from None
    if masks:
        base.prunekit_masks = _check_masks(path, base, masks)
    base.prunekit_info = meta["info"]
    return base.to(device)


def _base_model(path: Path | str | os.PathLike[str], arch: object, model: nn.Module | None) -> nn.Module:
    if model is not None:
        # A copy: low-rank and mask edits replay in place, and the caller's base must stay unedited.
        return copy.deepcopy(model)
    if arch is None:
        raise CheckpointError(
            f"{path} holds a user model (no zoo architecture): pass its unedited base instance, "
            "prunekit.load(path, model=MyNet(...)), so its edits can be replayed on it"
        )
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise CheckpointError(f"{path}: metadata has no architecture name")
    from prunekit.models import create

    return create(arch["name"], **arch.get("kwargs", {}))


def _mask_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = getattr(model, "prunekit_masks", None) or {}
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        # Refuse now rather than write a file that `load` would refuse.
        if name not in params or params[name].shape != mask.shape:
            have = tuple(params[name].shape) if name in params else "no such parameter"
            raise CheckpointError(
                f"mask for {name!r} has shape {tuple(mask.shape)} but the model has {have}; "
                "record masks on the model they belong to (surgery.history.record_masks)"
            )
        out[MASK_PREFIX + name] = mask.detach().to("cpu", torch.bool).contiguous().clone()
    return out


def _check_masks(
    path: Path | str | os.PathLike[str], model: nn.Module, masks: dict[str, torch.Tensor]
) -> MaskSet:
    from prunekit.surgery.masks import MaskSet  # surgery pulls in torch-pruning: only when a file has masks

    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise CheckpointError(
                f"{path}: the file holds a mask for {name!r}, which is not a parameter of the model"
            )
        if mask.shape != params[name].shape or mask.dtype != torch.bool:
            raise CheckpointError(
                f"{path}: the mask for {name!r} is {mask.dtype} {tuple(mask.shape)}; the parameter needs "
                f"torch.bool {tuple(params[name].shape)}"
            )
    return MaskSet(masks)


def _read_header_metadata(path: Path) -> dict[str, str]:
    # Read the header ourselves: safe_open's errors are terse, and a pickle handed to us must be named
    # as such.
    with path.open("rb") as fh:
        head = fh.read(9)
        if len(head) < 9:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        n = int.from_bytes(head[:8], "little")
        size = path.stat().st_size
        # A safetensors header is JSON starting with '{'. Test that before the pickle magic: a header
        # of 640..655 bytes has the length bytes 80 02, the same as a protocol-2 pickle.
        looks_safetensors = 0 < n <= size - 8 and head[8:9] == b"{"
        if not looks_safetensors and (head[:2] in _PICKLE_MAGIC or head[:2] == b"PK"):
            raise CheckpointError(
                f"{path} looks like a pickle / torch.save file; prunekit never unpickles model files. "
                "Convert it with `prunekit.model_file.save(model, ...)` from code you trust."
            )
        if n <= 0 or n > size - 8:
            raise CheckpointError(
                f"{path}: not a safetensors file (header length {n} for a {size}-byte file)"
            )
        try:
            header = json.loads(head[8:] + fh.read(n - 1))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (corrupt header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: safetensors file without prunekit metadata")
    return meta
