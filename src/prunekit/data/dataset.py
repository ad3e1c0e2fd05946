"""The in-memory dataset every loader consumes: uint8 images (N, C, H, W) plus int64 labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunekit.errors import DataError


@dataclass
class ImageTensorDataset:
    """`mean`/`std` are per-channel statistics in [0, 1] pixel units, used for normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 (N, C, H, W) tensor, "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"dataset {self.name!r}: labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"dataset {self.name!r}: mean/std need one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Sequence[int] | torch.Tensor | slice) -> ImageTensorDataset:
        if isinstance(indices, slice):
            images, labels = self.images[indices], self.labels[indices]
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64)
            images, labels = self.images[idx], self.labels[idx]
        return ImageTensorDataset(images, labels, self.classes, self.mean, self.std, self.name)
