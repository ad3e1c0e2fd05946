"""Training: fit/evaluate, schedules, checkpoints with exact resume, and torchrun/DDP helpers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from prunekit.train.config import TrainConfig, parse_piecewise
from prunekit.train.schedules import LRSchedule

if TYPE_CHECKING:
    from prunekit.train.distributed import DistInfo, cleanup, init_distributed
    from prunekit.train.loop import FitResult, evaluate, fit
    from prunekit.train.losses import training_loss

# The loop imports torch; imported on first use so the CLI can build its options from TrainConfig cheaply.
_LAZY = {
    "DistInfo": "prunekit.train.distributed",
    "cleanup": "prunekit.train.distributed",
    "init_distributed": "prunekit.train.distributed",
    "FitResult": "prunekit.train.loop",
    "evaluate": "prunekit.train.loop",
    "fit": "prunekit.train.loop",
    "training_loss": "prunekit.train.losses",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit.train' has no attribute {name!r}")


__all__ = [
    "DistInfo",
    "FitResult",
    "LRSchedule",
    "TrainConfig",
    "cleanup",
    "evaluate",
    "fit",
    "init_distributed",
    "parse_piecewise",
    "training_loss",
]
