"""The device-resident loader: the whole uint8 split lives on the device, batches are built there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data.augment import crop_flip, draw_crop_flip, normalization_constants, normalize
from prunekit.data.catalog import IMAGE_FOLDERS, load_dataset, standard_augmentation
from prunekit.data.dataset import ImageTensorDataset
from prunekit.data.image_folder import ImageFolderLoader
from prunekit.data.sharding import EpochSharding
from prunekit.errors import ConfigError


def augmentation_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    # Mixed through SeedSequence so (seed, epoch, rank) triples never collide the way seed + epoch would.
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class DeviceLoader(EpochSharding):
    """Yields (x float32 NCHW, y int64) on `device`; call `set_epoch(e)` before each epoch.

    Same seed + epoch gives identical batches on every run and device. Augmentation (train only) is a
    random crop of the zero-padded image and a horizontal flip, drawn per image; then (x/255 - mean)/std,
    or x/255 when `normalize` is False.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        shuffle: bool | None = None,
        crop_padding: int = 0,
        flip: bool = False,
        normalize: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._check_sharding(batch_size, rank, world_size)
        if crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {crop_padding}")
        if not train and (crop_padding or flip):
            raise ConfigError("evaluation loaders do not augment: pass train=True to use crop_padding/flip")
        if len(dataset) == 0:
            raise ConfigError(f"dataset {dataset.name!r} is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.shuffle = train if shuffle is None else shuffle
        self.crop_padding = crop_padding
        self.flip = flip
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        mean, std = (
            (dataset.mean, dataset.std)
            if normalize
            else ((0.0,) * dataset.shape[0], (1.0,) * dataset.shape[0])
        )
        self._scale, self._shift = normalization_constants(mean, std, self.device)
        self.num_samples = len(self._order())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.device)
        augment = self.train and (self.crop_padding > 0 or self.flip)
        generator = augmentation_generator(self.seed, self.epoch, self.rank) if augment else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images.index_select(0, index)
            if generator is not None:
                params = draw_crop_flip(len(index), self.crop_padding, self.flip, generator, self.device)
                x = crop_flip(x, self.crop_padding, params)
            yield normalize(x, self._scale, self._shift), self.labels.index_select(0, index)


def build_loaders(
    name: str,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    root: str | Path | None = None,
    download: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    eval_batch_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    normalize: bool = True,
    **dataset_kw: Any,
) -> tuple[DeviceLoader, DeviceLoader, ImageTensorDataset]:
    """(train loader with the dataset's standard augmentation, test loader, train split).

    `limit_*` keep the first n samples (the official files are already in random order). For
    `synthetic`, `seed` also seeds the generated data. `normalize=False` gives pixels in [0, 1] (what
    scripts using only `ToTensor()` trained on, e.g. DeepHoyer's MNIST models).
    """
    if name in IMAGE_FOLDERS:
        return _image_folder_loaders(
            name,
            batch_size,
            device=device,
            root=root,
            seed=seed,
            rank=rank,
            world_size=world_size,
            eval_batch_size=eval_batch_size,
            limit_train=limit_train,
            limit_test=limit_test,
            normalize=normalize,
            **dataset_kw,
        )
    if name == "synthetic":
        dataset_kw.setdefault("seed", seed)
    train_set = load_dataset(name, "train", root=root, download=download, **dataset_kw)
    test_set = load_dataset(name, "test", root=root, download=download, **dataset_kw)
    for limit, label in ((limit_train, "limit_train"), (limit_test, "limit_test")):
        if limit is not None and limit < 1:
            raise ConfigError(f"{label} must be >= 1, got {limit}")
    if limit_train is not None:
        train_set = train_set.subset(slice(0, limit_train))
    if limit_test is not None:
        test_set = test_set.subset(slice(0, limit_test))
    aug = standard_augmentation(name)
    train = DeviceLoader(
        train_set,
        batch_size,
        train=True,
        device=device,
        crop_padding=aug.crop_padding,
        flip=aug.flip,
        normalize=normalize,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    test = DeviceLoader(
        test_set,
        eval_batch_size or batch_size,
        train=False,
        device=device,
        normalize=normalize,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return train, test, train_set


def _image_folder_loaders(
    name: str,
    batch_size: int,
    *,
    device: torch.device | str,
    root: str | Path | None,
    seed: int,
    rank: int,
    world_size: int,
    eval_batch_size: int | None,
    limit_train: int | None,
    limit_test: int | None,
    normalize: bool,
    **kw: Any,
) -> tuple[ImageFolderLoader, ImageFolderLoader, Any]:
    if root is None:
        raise ConfigError(
            f"--data {name} needs --data-root: a folder holding train/ and val/ (ImageNet layout)"
        )
    folder = Path(root)
    if name == "imagenet" and not (folder / "train").is_dir() and (folder / "imagenet" / "train").is_dir():
        folder = folder / "imagenet"
    common = {"device": device, "normalize": normalize, "seed": seed, "rank": rank, "world_size": world_size}
    train = ImageFolderLoader(folder, "train", batch_size, train=True, **common, **kw)
    test = ImageFolderLoader(folder, "val", eval_batch_size or batch_size, train=False, **common, **kw)
    for loader, limit in ((train, limit_train), (test, limit_test)):
        if limit is not None:
            loader.limit(limit)
    return train, test, train.dataset
