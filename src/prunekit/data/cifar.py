"""CIFAR-10 and CIFAR-100: the official python batches (pickles read with a restricted unpickler)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data.safe_pickle import load_restricted
from prunekit.errors import DataError


@dataclass(frozen=True)
class CifarSource:
    archive: str
    url: str
    md5: str  # of the archive
    folder: str  # the archive's top folder, extracted into the data root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def files(self, split: str) -> tuple[str, ...]:
        return (*(self.train_files if split == "train" else self.test_files), self.meta_file)


CIFAR10 = CifarSource(
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    # The statistics the HRank/TRP/DeepHoyer/GReg code bases normalise with (std is per-pixel-ish, not exact).
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
)

CIFAR100 = CifarSource(
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    mean=(0.5071, 0.4867, 0.4408),
    std=(0.2675, 0.2565, 0.2761),
)


def _text_keys(obj: Any, path: Path) -> dict[str, Any]:
    # Python 2 pickles decode to str keys, Python 3 re-pickles keep b'...' keys: accept both.
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}; not a CIFAR python batch")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_split(
    folder: Path, source: CifarSource, split: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,), class names) of one split from `folder`."""
    meta_path = folder / source.meta_file
    meta = _text_keys(load_restricted(meta_path), meta_path)
    if source.names_key not in meta:
        raise DataError(f"{meta_path}: no {source.names_key!r} entry; not the official CIFAR meta file")
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[source.names_key])
    images, labels = [], []
    for file_name in source.files(split)[:-1]:
        path = folder / file_name
        batch = _text_keys(load_restricted(path), path)
        if "data" not in batch or source.label_key not in batch:
            raise DataError(
                f"{path}: needs 'data' and {source.label_key!r} entries; not an official CIFAR batch"
            )
        data = np.asarray(batch["data"])
        batch_labels = np.asarray(batch[source.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        if batch_labels.shape != (data.shape[0],):
            raise DataError(f"{path}: {data.shape[0]} images but {batch_labels.shape[0]} labels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(batch_labels))
    all_labels = torch.cat(labels)
    if all_labels.numel() and (int(all_labels.min()) < 0 or int(all_labels.max()) >= len(classes)):
        raise DataError(f"{folder}: labels outside 0..{len(classes) - 1}; batch and meta files do not match")
    return torch.cat(images), all_labels, classes
