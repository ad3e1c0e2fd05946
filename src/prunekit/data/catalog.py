"""Datasets by name: where they live on disk, how they are fetched, and their standard augmentation."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.data.archive import safe_extract
from prunekit.data.cifar import CIFAR10, CIFAR100, CifarSource, read_cifar_split
from prunekit.data.dataset import ImageTensorDataset
from prunekit.data.download import download_verified, mirror_url, verify_file
from prunekit.data.mnist import FASHION_MNIST, MNIST, IdxSource, read_idx_split
from prunekit.data.synthetic import make_synthetic
from prunekit.errors import ConfigError, DataError, unknown_name

DATA_ENV = "PRUNEKIT_DATA"
EMBEDDED_DIR = Path(__file__).resolve().with_name("embedded")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Augmentation:
    """The standard training augmentation of a dataset (evaluation never augments)."""

    crop_padding: int = 0
    flip: bool = False


_SOURCES: dict[str, IdxSource | CifarSource | None] = {
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "mnist": MNIST,
    "fashion_mnist": FASHION_MNIST,
    "fashion_mnist_mini": FASHION_MNIST,  # same classes and statistics, files packaged with prunekit
    "synthetic": None,
}
_AUGMENTATION = {"cifar10": Augmentation(4, True), "cifar100": Augmentation(4, True)}


# Folders of encoded images (ImageNet layout root/{train,val}/<class>/*): decoded per batch by
# `ImageFolderLoader`, never held as one tensor, so `build_loaders` serves them and `load_dataset` does not.
IMAGE_FOLDERS = ("imagefolder", "imagenet")


def list_datasets() -> list[str]:
    return sorted([*_SOURCES, *IMAGE_FOLDERS])


def standard_augmentation(name: str) -> Augmentation:
    if name not in _SOURCES:
        raise unknown_name("dataset", name, list_datasets())
    return _AUGMENTATION.get(name, Augmentation())


def data_root(root: str | Path | None = None) -> Path:
    """`root` if given, else $PRUNEKIT_DATA, else ~/.cache/prunekit/data."""
    if root is not None:
        return Path(root).expanduser()
    if env := os.environ.get(DATA_ENV):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "prunekit" / "data"


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = True,
    mirror: str | None = None,
    **kw: Any,
) -> ImageTensorDataset:
    """Load one split as uint8 tensors. `mirror` (or $PRUNEKIT_MIRROR) replaces the official download host.

    `synthetic` takes `num_samples`, `shape`, `num_classes`, `seed`; the other datasets take no keywords.
    `fashion_mnist_mini` is read from the files packaged with prunekit, whatever `root` and `download` say.
    """
    if name in IMAGE_FOLDERS:
        raise ConfigError(
            f"{name!r} is a folder of encoded images: use build_loaders({name!r}, ...) or ImageFolderLoader, "
            "which decode batches in worker processes"
        )
    if name not in _SOURCES:
        raise unknown_name("dataset", name, list_datasets())
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    if name == "synthetic":
        allowed = {"num_samples", "shape", "num_classes", "seed"}
        if unexpected := sorted(set(kw) - allowed):
            raise ConfigError(f"synthetic got unknown options {unexpected}; valid: {sorted(allowed)}")
        return make_synthetic(split, **kw)
    if kw:
        raise ConfigError(f"dataset {name!r} takes no options, got {sorted(kw)}")
    source = _SOURCES[name]
    if isinstance(source, CifarSource):
        folder = _ensure_cifar(source, data_root(root), download, mirror, name, split)
        images, labels, classes = read_cifar_split(folder, source, split)
        return ImageTensorDataset(images, labels, classes, source.mean, source.std, name)
    assert isinstance(source, IdxSource)
    if name == "fashion_mnist_mini":
        folder = EMBEDDED_DIR
    else:
        folder = _ensure_idx(source, data_root(root), download, mirror, name, split)
    images, labels = read_idx_split(folder, source, split)
    return ImageTensorDataset(images, labels, source.classes, source.mean, source.std, name)


# Files already on disk are not re-hashed on every load: repackaged copies (e.g. Debian's) differ in their
# gzip headers yet hold identical data, and the IDX/pickle readers validate structure anyway. Downloads and
# archives about to be extracted are always verified.


def _ensure_idx(
    source: IdxSource, root: Path, download: bool, mirror: str | None, name: str, split: str
) -> Path:
    folder = root / source.folder
    missing = [f for f in source.files(split) if not (folder / f).is_file()]
    if missing and not download:
        raise _missing_error(name, split, folder, missing, [source.url(f) for f in missing])
    for file_name in missing:
        url = mirror_url(source.url(file_name), f"{source.folder}/{file_name}", mirror)
        download_verified(url, folder / file_name, md5=source.md5[file_name])
    return folder


def _ensure_cifar(
    source: CifarSource, root: Path, download: bool, mirror: str | None, name: str, split: str
) -> Path:
    folder = root / source.folder
    missing = [f for f in source.files(split) if not (folder / f).is_file()]
    if not missing:
        return folder
    archive = root / source.archive
    if not archive.is_file():
        if not download:
            raise _missing_error(name, split, folder, missing, [source.url], archive)
        download_verified(mirror_url(source.url, source.archive, mirror), archive, md5=source.md5)
    else:
        verify_file(archive, md5=source.md5)
    if folder.exists():
        # A partial folder (some batches missing) is replaced wholesale by the verified archive's copy.
        shutil.rmtree(folder)
    safe_extract(archive, root, source.folder)
    if still_missing := [f for f in source.files(split) if not (folder / f).is_file()]:
        raise DataError(
            f"{archive} does not contain {', '.join(still_missing)}; it is not the official archive"
        )
    return folder


def _missing_error(
    name: str, split: str, folder: Path, missing: list[str], urls: list[str], archive: Path | None = None
) -> DataError:
    where = f" (or the archive {archive})" if archive else ""
    return DataError(
        f"dataset {name!r} ({split}): missing {', '.join(missing)} in {folder}{where}. "
        "Run without --no-download (download=True in Python) to fetch and verify it, or download "
        f"{' '.join(urls)} into "
        f"{folder.parent if archive else folder} yourself; "
        f"set --data-root or ${DATA_ENV} to use another folder"
    )
