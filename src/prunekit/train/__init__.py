"""Training: fit/evaluate, schedules, checkpoints with exact resume, and torchrun/DDP helpers."""

from prunekit.train.config import TrainConfig
from prunekit.train.distributed import DistInfo, cleanup, init_distributed
from prunekit.train.loop import FitResult, evaluate, fit
from prunekit.train.losses import training_loss
from prunekit.train.schedules import LRSchedule, parse_piecewise

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
