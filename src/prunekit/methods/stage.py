"""The run's fine-tuning context, handed to `Method.prune` for methods whose pruning trains.

HRank's original schedule masks one entry and fine-tunes before the next; a method like that receives a
`Stage` and calls `stage.fit(...)`, and the pipeline stays free of per-method branches. Outside a run
(`prunekit.prune`) there is no stage, and such a method refuses with a message saying what it needs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.train import TrainConfig, fit
from prunekit.train.loop import FitResult, Loader
from prunekit.train.trainer_state import has_checkpoint

#: What a method's own training under the run folder keeps for a resumed run: a log of its finished
#: stages, the weights after the last one, and one folder per stage (HRank's layer-wise schedule). The
#: pipeline's resume leaves them in place; the method decides what of them is still valid.
STAGES_LOG = "stages.jsonl"
STAGES_STATE = "stages_state.safetensors"
STAGE_FOLDER = re.compile(r"stage\d{3}")


@dataclass
class Stage:
    """Training data, the fine-tune config, and where the run writes. `finetune` is None when the run asked
    for no fine-tuning."""

    train: Loader
    val: Loader
    finetune: TrainConfig | None
    run_dir: Path | None = None
    device: torch.device | str | None = None
    progress: bool | None = False
    teacher: nn.Module | None = None  # distils into every fine-tune of the run (`prunekit prune --teacher`)
    #: A resumed run: each `fit` whose folder holds a checkpoint continues from it (weights, optimiser, RNG,
    #: step and the hooks' state), so an interrupted stage goes on where it stopped instead of again.
    resume: bool = False

    def fit(
        self,
        model: nn.Module,
        cfg: TrainConfig | None = None,
        *,
        hooks: Sequence[Any] = (),
        subdir: str | None = None,
        seed_offset: int = 0,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> FitResult:
        """Train `model` in place with `cfg` (default: the run's fine-tune config), its log in `subdir` of
        the run folder."""
        cfg = cfg or self.finetune
        if cfg is None:
            raise ValueError("Stage.fit needs a TrainConfig: the run has no fine-tune config")
        if seed_offset:
            cfg = dataclasses.replace(cfg, seed=cfg.seed + seed_offset)
        run_dir = self.run_dir / subdir if self.run_dir is not None and subdir else self.run_dir
        return fit(
            model,
            self.train,
            self.val,
            cfg,
            hooks=hooks,
            teacher=self.teacher,
            run_dir=run_dir,
            resume=self.resume and run_dir is not None and has_checkpoint(run_dir),
            progress=self.progress,
            device=self.device,
            on_epoch_end=on_epoch_end,
        )
