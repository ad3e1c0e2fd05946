"""MNIST and Fashion-MNIST: the official IDX gz files, their URLs and checksums."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit.data.idx import read_idx
from prunekit.errors import DataError


@dataclass(frozen=True)
class IdxSource:
    folder: str  # sub-folder of the data root
    base_url: str
    md5: dict[str, str]  # official checksum of every file name
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def files(self, split: str) -> tuple[str, str]:
        prefix = "train" if split == "train" else "t10k"
        return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"

    def url(self, file_name: str) -> str:
        return self.base_url + file_name


MNIST = IdxSource(
    folder="mnist",
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    classes=tuple(
        f"{d} - {w}" for d, w in enumerate("zero one two three four five six seven eight nine".split())
    ),
    mean=(0.1307,),
    std=(0.3081,),
)

FASHION_MNIST = IdxSource(
    folder="fashion-mnist",
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mean=(0.2860,),
    std=(0.3530,),
)


def read_idx_split(folder: Path, source: IdxSource, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, H, W), labels int64 (N,)) of one split from `folder`."""
    images_file, labels_file = source.files(split)
    images = read_idx(folder / images_file, ndim=3)
    labels = read_idx(folder / labels_file, ndim=1).to(torch.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{folder}: {images_file} holds {images.shape[0]} images but {labels_file} holds "
            f"{labels.shape[0]} labels; the files do not belong together"
        )
    if labels.numel() and int(labels.max()) >= len(source.classes):
        raise DataError(
            f"{folder / labels_file}: label {int(labels.max())} is out of range 0..{len(source.classes) - 1}"
        )
    return images.unsqueeze(1), labels
