"""torchrun / DistributedDataParallel: read the launcher's environment, start and end the process group.

prunekit never spawns processes itself: `torchrun --nproc-per-node=N -m prunekit train ...` starts them and
sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python` run gets the single-process defaults.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from prunekit.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or return single-process info.

    `device=None` means CUDA when available (one GPU per process: cuda:LOCAL_RANK), else CPU.
    """
    rank, world_size, local_rank = (
        _env_int(name, default) for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    )
    if not 0 <= rank < world_size:
        raise ConfigError(
            f"RANK={rank} is outside WORLD_SIZE={world_size}; start multi-process runs with torchrun"
        )
    want = torch.device(device) if device is not None else None
    use_cuda = want.type == "cuda" if want is not None else torch.cuda.is_available()
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for CUDA but torch sees no GPU; use --device cpu")
    if world_size == 1:
        return DistInfo(device=want or torch.device("cuda" if use_cuda else "cpu"))
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(*, failed: bool = False) -> None:
    """Leave the process group together with the other ranks.

    DistributedDataParallel wrappers sit in reference cycles that keep the gloo/nccl process group alive past
    `destroy_process_group`; if one survives until interpreter shutdown, a peer that already exited makes
    gloo's worker thread abort the process ("terminate called without an active exception", seen on CI about
    one run in ten). So: free them now, wait for every rank, then destroy the group. After an error
    (`failed=True`) the other ranks may never arrive, so don't wait: torchrun stops them.
    """
    if tdist.is_available() and tdist.is_initialized():
        gc.collect()
        if not failed:
            tdist.barrier()
        tdist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, dist: DistInfo | None) -> Tensor:
    """Sum over all ranks in place (a no-op in a single process), so every rank reports the same metrics."""
    if dist is not None and dist.distributed:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(obj: T, dist: DistInfo | None) -> T:
    """Rank 0's `obj` on every rank (pickled between our own processes only; a no-op in one process)."""
    if dist is None or not dist.distributed:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0, device=dist.device if dist.device.type == "cuda" else None)
    return box[0]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={value!r} is not an integer (set by torchrun)"
        ) from None
