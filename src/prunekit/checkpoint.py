"""Model files: one `.safetensors` file holding the weights and JSON metadata, never a pickle.

The metadata records how to rebuild the model: the zoo architecture and its arguments
(`model.prunekit_arch`) and the ordered edits applied since (`model.prunekit_edits`: channel removals,
masks, decompositions). `load` rebuilds the base, replays the edits, then loads the weights strictly, so a
file whose metadata and tensors disagree is refused instead of half-loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from prunekit.errors import CheckpointError

FORMAT = "prunekit.model/1"


def save(model: nn.Module, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None) -> Path:
    """Write `model` atomically to `path`. `info` (accuracy, MACs, ...) is stored as JSON beside the weights."""
    arch = getattr(model, "prunekit_arch", None)
    if arch is None:
        raise CheckpointError(
            "model has no `prunekit_arch`: build it with prunekit.models.create(...) so the file can be "
            "rebuilt from its architecture (user models: save their state_dict yourself)"
        )
    from prunekit import __version__

    metadata = {
        "format": FORMAT,
        "prunekit_version": __version__,
        "arch": json.dumps(arch),
        "edits": json.dumps(getattr(model, "prunekit_edits", [])),
        "info": json.dumps(info or {}),
    }
    # safetensors refuses aliased storage and non-contiguous views; copies are cheap next to the I/O.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
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


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored at `path` (architecture, then edits, then strict weights)."""
    from prunekit.models import create

    meta = read_metadata(path)
    arch = meta["arch"]
    if not isinstance(arch, dict) or "name" not in arch:
        raise CheckpointError(f"{path}: metadata has no architecture name")
    model = create(arch["name"], **arch.get("kwargs", {}))
    if meta["edits"]:
        from prunekit.surgery.history import replay  # edits live with the surgery that made them

        model = replay(model, meta["edits"])
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the model its metadata describes:\n{exc}"
        ) from None
    model.prunekit_info = meta["info"]
    return model.to(device)


def _read_header_metadata(path: Path) -> dict[str, str]:
    # Read the header ourselves: safe_open's errors are terse, and a pickle handed to us must be named as such.
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK":
            raise CheckpointError(
                f"{path} looks like a pickle / torch.save file; prunekit never unpickles model files. "
                "Convert it with `prunekit.checkpoint.save(model, ...)` from code you trust."
            )
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n <= 0 or n > size - 8:
            raise CheckpointError(
                f"{path}: not a safetensors file (header length {n} for a {size}-byte file)"
            )
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (corrupt header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: safetensors file without prunekit metadata")
    return meta
