"""The sample order every loader uses: seeded per epoch and sharded across ranks as torch's
DistributedSampler does. `DeviceLoader` and `ImageFolderLoader` both build on `EpochSharding`."""

from __future__ import annotations

import math
from typing import Any

import torch

from prunekit.errors import ConfigError


def shard_order(
    num_items: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, drop_last: bool
) -> torch.Tensor:
    """This rank's sample indices for one epoch, exactly as torch's DistributedSampler lays them out.

    Every rank draws the same permutation (generator seeded with seed + epoch) and takes every
    `world_size`-th index from `rank`; shards have equal sizes, by dropping the tail (drop_last) or by
    wrapping around to the start of the permutation.
    """
    if shuffle:
        order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(num_items)
    if world_size == 1:
        return order
    if drop_last:
        order = order[: num_items // world_size * world_size]
    else:
        padding = math.ceil(num_items / world_size) * world_size - num_items
        order = torch.cat([order, order.repeat(math.ceil(padding / max(num_items, 1)))[:padding]])
    return order[rank::world_size]


class EpochSharding:
    """What every loader shares: a seeded order per epoch, sharded across ranks, cut into batches.

    Subclasses set `dataset`, `batch_size`, `shuffle`, `drop_last`, `seed`, `rank`, `world_size`,
    `epoch` and then `num_samples = len(self._order())`.
    """

    dataset: Any
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    rank: int
    world_size: int
    epoch: int
    num_samples: int

    @staticmethod
    def _check_sharding(batch_size: int, rank: int, world_size: int) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _order(self) -> torch.Tensor:
        return shard_order(
            len(self.dataset),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
        )
