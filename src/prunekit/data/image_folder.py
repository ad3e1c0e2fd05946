"""ImageNet-style image folders (`root/{train,val}/<class>/*.JPEG`), decoded with PIL in loader workers.

Workers only decode and crop to uint8 (CPU, in parallel); normalisation happens on the device as one
batched op, as in DeviceLoader, so both loaders yield the same (x float32 NCHW, y int64) protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from prunekit.data.augment import normalization_constants, normalize
from prunekit.data.sharding import EpochSharding
from prunekit.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """torchvision's RandomResizedCrop: a random area/aspect box, resized (bilinear) to size x size."""
    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:  # fall back to the largest central box within the ratio bounds
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def resize_center_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """Resize the shorter side to `resize` (bilinear), then take the central crop x crop window."""
    width, height = img.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = round((new_h - crop) / 2), round((new_w - crop) / 2)
    return img.crop((left, top, left + crop, top + crop))


class ImageFolder(torch.utils.data.Dataset):
    """One split of an image folder. Items are (epoch, index) pairs so augmentation is reproducible
    whatever worker decodes the image: its random stream is seeded by (seed, epoch, index)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        train: bool,
        image_size: int = 224,
        resize: int = 256,
        seed: int = 0,
    ) -> None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(
                f"image folder {folder} not found; expected the ImageNet layout root/{split}/<class>/*.JPEG"
            )
        self.classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((folder / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}/<class>/")
        self.train = train
        self.image_size = image_size
        self.resize = resize
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W) after the crop."""
        return 3, self.image_size, self.image_size

    def limit(self, n: int) -> None:
        """Keep n images spread evenly over the (class-sorted) list, so every class stays represented."""
        step = max(1, len(self.samples) // n)
        self.samples = self.samples[::step][:n]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = item
        path, label = self.samples[index]
        try:
            with Image.open(path) as raw:
                img = raw.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}; remove or replace the file") from exc
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            img = random_resized_crop(img, self.image_size, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = resize_center_crop(img, self.resize, self.image_size)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), label


class ImageFolderLoader(EpochSharding):
    """DeviceLoader's protocol (set_epoch, len, num_samples, yields device batches) for image folders."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        image_size: int = 224,
        resize: int = 256,
        num_workers: int = 4,
        normalize: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._check_sharding(batch_size, rank, world_size)
        self.dataset = ImageFolder(root, split, train=train, image_size=image_size, resize=resize, seed=seed)
        self.batch_size = batch_size
        self.train = train
        self.shuffle = train
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize else ((0.0,) * 3, (1.0,) * 3)
        self._scale, self._shift = normalization_constants(mean, std, self.device)
        self.num_samples = len(self._order())

    def limit(self, n: int) -> None:
        """Use only n images of the split (spread over the classes): quick runs and tests."""
        self.dataset.limit(n)
        self.num_samples = len(self._order())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items = [(self.epoch, int(i)) for i in self._order()]
        batches = [
            items[s : s + self.batch_size] for s in range(0, len(self) * self.batch_size, self.batch_size)
        ]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            yield normalize(x, self._scale, self._shift), y.to(self.device, non_blocking=True)
