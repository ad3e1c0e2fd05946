"""Tiny models and synthetic loaders shared by the training tests and the torchrun worker script."""

from __future__ import annotations

from torch import nn

from prunekit.data import DeviceLoader, load_dataset

SHAPE = (1, 8, 8)
CLASSES = 4


def tiny_net(*, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """About 100 parameters: conv → (BN) → ReLU → 2×2 average pool → (dropout) → linear."""
    return nn.Sequential(
        nn.Conv2d(SHAPE[0], 4, 3, padding=1, bias=not bn),
        nn.BatchNorm2d(4) if bn else nn.Identity(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(16, CLASSES),
    )


def loaders(
    batch_size: int,
    *,
    num_train: int = 256,
    num_val: int = 128,
    augment: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DeviceLoader, DeviceLoader]:
    kw = {"num_classes": CLASSES, "shape": SHAPE, "seed": 0}
    train = load_dataset("synthetic", "train", num_samples=num_train, **kw)
    val = load_dataset("synthetic", "test", num_samples=num_val, **kw)
    return (
        DeviceLoader(
            train,
            batch_size,
            train=True,
            crop_padding=1 if augment else 0,
            flip=augment,
            seed=0,
            rank=rank,
            world_size=world_size,
        ),
        DeviceLoader(val, 64, train=False, rank=rank, world_size=world_size),
    )
