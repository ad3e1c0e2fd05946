"""Deterministic class-dependent random images of any shape, for tests and speed benchmarks."""

from __future__ import annotations

import math

import numpy as np
import torch

from prunekit.data.dataset import ImageTensorDataset
from prunekit.errors import ConfigError

_PROTOTYPE_WEIGHT = 0.6  # image = 0.6 * class prototype + 0.4 * per-image noise, both uniform in [0, 1)
_PROTOTYPE_CELL = 4  # prototypes are piecewise constant on 4x4 cells, so small convnets can learn them
_CHUNK = 4096


def make_synthetic(
    split: str = "train",
    num_samples: int | None = None,
    shape: tuple[int, int, int] | list[int] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
) -> ImageTensorDataset:
    """Both splits share the class prototypes of `seed`; their samples come from different streams."""
    if num_samples is None:
        num_samples = 5000 if split == "train" else 1000
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"synthetic shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    if num_samples < 1 or num_classes < 1:
        raise ConfigError(
            f"synthetic needs num_samples >= 1 and num_classes >= 1, got {num_samples}, {num_classes}"
        )
    c, h, w = (int(s) for s in shape)
    proto_gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(
        (num_classes, c, math.ceil(h / _PROTOTYPE_CELL), math.ceil(w / _PROTOTYPE_CELL)), generator=proto_gen
    )
    prototypes = coarse.repeat_interleave(_PROTOTYPE_CELL, 2).repeat_interleave(_PROTOTYPE_CELL, 3)[
        :, :, :h, :w
    ]
    split_seed = int(np.random.SeedSequence([seed, 0 if split == "train" else 1]).generate_state(1)[0])
    gen = torch.Generator().manual_seed(split_seed)
    labels = torch.randint(num_classes, (num_samples,), generator=gen)
    images = torch.empty((num_samples, c, h, w), dtype=torch.uint8)
    for start in range(0, num_samples, _CHUNK):
        chunk = labels[start : start + _CHUNK]
        noise = torch.rand((len(chunk), c, h, w), generator=gen)
        mixed = prototypes[chunk] * _PROTOTYPE_WEIGHT + noise * (1 - _PROTOTYPE_WEIGHT)
        images[start : start + _CHUNK] = (mixed * 255).round_().to(torch.uint8)
    # Statistics of the generating distribution (sum of two independent scaled uniforms).
    std = math.sqrt((_PROTOTYPE_WEIGHT**2 + (1 - _PROTOTYPE_WEIGHT) ** 2) / 12)
    return ImageTensorDataset(
        images=images,
        labels=labels,
        classes=tuple(f"class_{k}" for k in range(num_classes)),
        mean=(0.5,) * c,
        std=(std,) * c,
        name="synthetic",
    )
