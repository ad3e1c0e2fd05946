"""The per-epoch training checkpoint in a run folder, written atomically so a crash never leaves a torn file.

`last.safetensors` holds the model's state_dict (metadata: epoch); `trainer_state.pt` holds everything else
needed to continue exactly — optimizer state, step, best accuracy, history and RNG states — as tensors and
plain containers, read back with `torch.load(..., weights_only=True)` only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.errors import CheckpointError

WEIGHTS = "last.safetensors"
STATE = "trainer_state.pt"


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file() and (Path(run_dir) / STATE).is_file()


def save_checkpoint(run_dir: str | os.PathLike[str], model: nn.Module, state: dict[str, Any]) -> None:
    """`state` must hold "epoch"; weights go first, so a torn pair is detected by `load_checkpoint`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Copies: safetensors refuses shared or strided storage (tied weights, channels_last, pruned views).
    tensors = {
        name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for name, t in model.state_dict().items()
    }
    _atomic(run_dir / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"epoch": str(state["epoch"])}))
    _atomic(run_dir / STATE, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    run_dir: str | os.PathLike[str], model: nn.Module, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Load the weights into `model` (strictly) and return the trainer state."""
    run_dir = Path(run_dir)
    if not has_checkpoint(run_dir):
        raise CheckpointError(
            f"cannot resume: {run_dir} has no {WEIGHTS} + {STATE} (no epoch finished there yet); "
            "start without --resume or point --out at the run to continue"
        )
    try:
        state = torch.load(run_dir / STATE, map_location="cpu", weights_only=True)  # RNG states must be CPU
    except Exception as exc:  # corrupt zip, or an object weights_only refuses to unpickle
        raise CheckpointError(f"{run_dir / STATE} is corrupt or unsafe to load: {exc}") from None
    try:
        with safe_open(run_dir / WEIGHTS, framework="pt", device=str(device)) as f:
            weights_epoch = (f.metadata() or {}).get("epoch")
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{run_dir / WEIGHTS} is corrupt: {exc}") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"{run_dir / STATE} is not a prunekit trainer state")
    if weights_epoch != str(state["epoch"]):
        raise CheckpointError(
            f"{run_dir / WEIGHTS} is from epoch {weights_epoch} but {STATE} from epoch {state['epoch']} "
            "(the run was killed while saving); an exact resume is impossible, restart the run"
        )
    _load_weights_strictly(model, weights, run_dir / WEIGHTS)
    return state


def _load_weights_strictly(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if items
        ]
        raise CheckpointError(
            f"{path} does not match the model (another architecture or pruned differently): "
            f"{'; '.join(parts)}"
        )
    model.load_state_dict(weights, strict=True)


def _atomic(target: Path, write: Any) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    write(tmp)
    os.replace(tmp, target)
