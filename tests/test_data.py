"""Datasets: real MNIST/Fashion-MNIST, CIFAR in the official format, safe pickles/archives, errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data import (
    ImageFolder,
    ImageFolderLoader,
    ImageTensorDataset,
    build_loaders,
    catalog,
    data_root,
    list_datasets,
    load_dataset,
)
from prunekit.data.archive import safe_extract
from prunekit.data.catalog import EMBEDDED_DIR
from prunekit.data.cifar import CIFAR10, CIFAR100
from prunekit.data.idx import parse_idx, read_idx, write_idx
from prunekit.data.image_folder import resize_center_crop
from prunekit.data.mnist import FASHION_MNIST, MNIST
from prunekit.data.safe_pickle import load_restricted
from prunekit.errors import ChecksumError, ConfigError, DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> dict[str, ImageTensorDataset]:
    return {s: load_dataset("mnist", s, root=shared_data, download=False) for s in ("train", "test")}


@pytest.fixture(scope="module")
def fashion(shared_data: Path) -> dict[str, ImageTensorDataset]:
    return {s: load_dataset("fashion_mnist", s, root=shared_data, download=False) for s in ("train", "test")}


# ---- real MNIST / Fashion-MNIST -------------------------------------------------------------------------


def test_mnist_published_counts_labels_and_mean(mnist: dict[str, ImageTensorDataset]) -> None:
    train, test = mnist["train"], mnist["test"]
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert round(train.images.double().mean().item() / 255, 4) == 0.1307
    assert round(train.images.double().std().item() / 255, 4) == 0.3081
    assert train.num_classes == 10 and train.mean == (0.1307,) and train.std == (0.3081,)


def test_fashion_mnist_published_counts_labels_and_mean(fashion: dict[str, ImageTensorDataset]) -> None:
    train, test = fashion["train"], fashion["test"]
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert round(train.images.double().mean().item() / 255, 4) == 0.2860
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


@pytest.mark.parametrize("source", [MNIST, FASHION_MNIST], ids=["mnist", "fashion-mnist"])
def test_shipped_md5_table_matches_the_official_files(shared_data: Path, source) -> None:
    for file_name, md5 in source.md5.items():
        assert hashlib.md5((shared_data / source.folder / file_name).read_bytes()).hexdigest() == md5


def test_embedded_mini_is_the_first_images_of_each_class(fashion: dict[str, ImageTensorDataset]) -> None:
    for split, per_class in (("train", 600), ("test", 100)):
        mini = load_dataset("fashion_mnist_mini", split, root="/nonexistent", download=False)
        full = fashion[split]
        keep = (
            torch.cat([torch.nonzero(full.labels == k).flatten()[:per_class] for k in range(10)])
            .sort()
            .values
        )
        assert torch.bincount(mini.labels).tolist() == [per_class] * 10
        assert torch.equal(mini.images, full.images[keep]) and torch.equal(mini.labels, full.labels[keep])
        assert mini.classes == full.classes and mini.name == "fashion_mnist_mini"
    assert sum(p.stat().st_size for p in EMBEDDED_DIR.iterdir()) <= 5 * 2**20
    assert "The MIT License" in (EMBEDDED_DIR / "LICENSE").read_text()
    readme = (EMBEDDED_DIR / "README.md").read_text()
    for gz in EMBEDDED_DIR.glob("*.gz"):
        assert f"| {gz.name} | {hashlib.sha256(gz.read_bytes()).hexdigest()} |" in readme


# ---- IDX --------------------------------------------------------------------------------------------------


def test_idx_round_trip_and_errors(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte.gz", data)
    assert read_idx(tmp_path / "x-idx3-ubyte.gz", ndim=3).tolist() == data.tolist()
    raw = b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert parse_idx(raw + data.tobytes(), 3).shape == (2, 3, 4)
    with pytest.raises(DataError, match=r"bad IDX magic number 0x00000801, expected 0x00000803"):
        parse_idx(b"\x00\x00\x08\x01" + raw[4:] + data.tobytes(), 3)
    with pytest.raises(DataError, match=r"shape \(2, 3, 4\) = 24 bytes but the file holds 23"):
        parse_idx(raw + data.tobytes()[:-1], 3)
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file .*bad.gz"):
        read_idx(tmp_path / "bad.gz", 1)


# ---- CIFAR in the official format -------------------------------------------------------------------------


def _cifar_images(n: int, offset: int) -> np.ndarray:
    """(n, 3072) rows: R plane, then G, then B, each 32x32 row-major, with recognisable values."""
    pix = np.arange(1024)
    rows = [
        np.concatenate([(pix + offset + i) % 256, (pix * 3 + i) % 256, np.full(1024, (i + offset) % 256)])
        for i in range(n)
    ]
    return np.stack(rows).astype(np.uint8)


def _write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(folder: Path, per_batch: int = 3) -> None:
    folder.mkdir(parents=True)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    for i, name in enumerate([*CIFAR10.train_files, "test_batch"]):
        labels = [(i + j) % 10 for j in range(per_batch)]
        _write_pickle(
            folder / name,
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": _cifar_images(per_batch, offset=10 * i),
                b"filenames": [],
            },
        )


def test_cifar10_batches_decode_to_nchw(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.labels[:6].tolist() == [0, 1, 2, 1, 2, 3]
    assert train.classes[:3] == ("airplane", "automobile", "bird") and train.num_classes == 10
    # batch 2 (offset 10), image 1: R[y, x] = (32y + x + 11) % 256, G = (3(32y + x) + 1) % 256, B = 11
    img = train.images[4]
    assert img[0, 0, 0] == 11 and img[0, 0, 5] == 16 and img[0, 2, 1] == (64 + 1 + 11) % 256
    assert img[1, 1, 0] == (3 * 32 + 1) % 256 and img[2].unique().tolist() == [11]
    assert train.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [f"class{k}".encode() for k in range(100)]
    _write_pickle(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"x"] * 20})
    _write_pickle(
        folder / "train",
        {b"data": _cifar_images(4, 0), b"fine_labels": [99, 0, 42, 7], b"coarse_labels": [0, 0, 0, 0]},
    )
    _write_pickle(
        folder / "test", {b"data": _cifar_images(2, 5), b"fine_labels": [3, 4], b"coarse_labels": [0, 0]}
    )
    train = load_dataset("cifar100", "train", root=tmp_path, download=False)
    assert (
        train.labels.tolist() == [99, 0, 42, 7]
        and train.num_classes == 100
        and train.classes[42] == "class42"
    )
    assert load_dataset("cifar100", "test", root=tmp_path, download=False).images[1, 2, 0, 0] == 6
    assert train.std == CIFAR100.std


def _tar_gz(path: Path, entries: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_cifar10_archive_is_verified_then_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cifar10(tmp_path / "build" / "cifar-10-batches-py", per_batch=2)
    built = tmp_path / "build" / "cifar-10-batches-py"
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    _tar_gz(archive, {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(built.iterdir())})
    with pytest.raises(
        ChecksumError, match="md5 expected c58f30108f718f92721af3b95e74349a, got [0-9a-f]{32}"
    ):
        load_dataset("cifar10", "train", root=root, download=False)
    assert not (root / "cifar-10-batches-py").exists()
    # Our small archive is not the official one: accept its own checksum to test extraction.
    monkeypatch.setitem(
        catalog._SOURCES, "cifar10", replace(CIFAR10, md5=hashlib.md5(archive.read_bytes()).hexdigest())
    )
    test = load_dataset("cifar10", "test", root=root, download=False)
    assert test.images.shape == (2, 3, 32, 32)
    assert torch.equal(test.images[1], torch.from_numpy(_cifar_images(2, 50)[1].reshape(3, 32, 32)))
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(
        p.name for p in built.iterdir()
    )
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(
    ("member", "reason"),
    [("/etc/evil", "escapes"), ("top/../../evil", "escapes"), ("other/file", "outside top/")],
)
def test_safe_extract_refuses_escaping_members(tmp_path: Path, member: str, reason: str) -> None:
    archive = tmp_path / "a.tar.gz"
    _tar_gz(archive, {"top/ok": b"fine", member: b"evil"})
    with pytest.raises(DataError, match=reason):
        safe_extract(archive, tmp_path, "top")
    assert not (tmp_path / "top").exists() and not (tmp_path.parent / "evil").exists()


def test_safe_extract_refuses_links(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("top/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataError, match="'top/passwd' is a link"):
        safe_extract(archive, tmp_path, "top")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_restricted_unpickler_refuses_code_execution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to unpickle global (posix|os|nt)\.system"):
        load_restricted(evil)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, protocol=protocol))
    assert load_restricted(path)[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]


# ---- names, roots, missing files --------------------------------------------------------------------------


def test_unknown_dataset_lists_valid_ones() -> None:
    assert list_datasets() == [
        "cifar10",
        "cifar100",
        "fashion_mnist",
        "fashion_mnist_mini",
        "imagefolder",
        "imagenet",
        "mnist",
        "synthetic",
    ]
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar11'; valid datasets: cifar10, cifar100, "):
        load_dataset("cifar11")
    with pytest.raises(ConfigError, match=r"unknown split 'val'; valid splits: test, train"):
        load_dataset("mnist", "val")
    with pytest.raises(ConfigError, match=r"takes no options, got \['shape'\]"):
        load_dataset("mnist", shape=(1, 2, 3))


def test_missing_files_without_download_name_file_path_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"missing t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in "
        + str(tmp_path / "mnist")
        + r".*without --no-download.*https://ossci-datasets",
    ):
        load_dataset("mnist", "test", root=tmp_path, download=False)
    with pytest.raises(DataError, match=r"missing data_batch_1.*cifar-10-python.tar.gz.*www.cs.toronto.edu"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)


def test_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("PRUNEKIT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_root() == tmp_path / ".cache" / "prunekit" / "data"


# ---- synthetic ---------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_class_dependent() -> None:
    a = load_dataset("synthetic", num_samples=300, shape=(2, 8, 12), num_classes=3, seed=7)
    b = load_dataset("synthetic", num_samples=300, shape=(2, 8, 12), num_classes=3, seed=7)
    c = load_dataset("synthetic", num_samples=300, shape=(2, 8, 12), num_classes=3, seed=8)
    test = load_dataset("synthetic", "test", num_samples=300, shape=(2, 8, 12), num_classes=3, seed=7)
    assert a.images.shape == (300, 2, 8, 12) and a.num_classes == 3
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images, test.images)
    # nearest class mean (from train) classifies the test split well above chance (1/3)
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(3)])
    dist = ((test.images.float()[:, None] - means[None]) ** 2).flatten(2).sum(2)
    assert (dist.argmin(1) == test.labels).float().mean() > 0.9
    with pytest.raises(ConfigError, match=r"unknown options \['size'\]"):
        load_dataset("synthetic", size=3)


# ---- image folders -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(3):
                array = rng.integers(0, 256, (18 + i, 20 + 2 * i, 3), dtype=np.uint8)
                suffix = ".png" if i % 2 else ".JPEG"
                Image.fromarray(array).save(root / split / wnid / f"img{i}{suffix}")
    (root / "train" / "n01440764" / "notes.txt").write_text("not an image")
    return root


def test_resize_center_crop_exact_pixels() -> None:
    array = np.arange(18 * 18 * 3, dtype=np.uint8).reshape(18, 18, 3)
    out = np.asarray(resize_center_crop(Image.fromarray(array), resize=18, crop=16))
    assert np.array_equal(out, array[1:17, 1:17])
    wide = resize_center_crop(Image.fromarray(np.zeros((20, 40, 3), np.uint8)), resize=10, crop=8)
    assert wide.size == (8, 8)


def test_image_folder_val_loader_is_exact_and_normalised(image_root: Path) -> None:
    folder = ImageFolder(image_root, "val", train=False, image_size=16, resize=18)
    assert folder.classes == ("n01440764", "n01443537") and len(folder) == 6
    loader = ImageFolderLoader(image_root, "val", 4, train=False, image_size=16, resize=18, num_workers=0)
    batches = list(loader)
    assert len(loader) == 2 and [x.shape for x, _ in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(image_root / "val" / "n01440764" / "img0.JPEG").convert("RGB"))  # 18x20
    expected = (torch.from_numpy(first[1:17, 2:18].copy()).permute(2, 0, 1).float() / 255 - 0.485) / 0.229
    assert torch.allclose(batches[0][0][0, 0], expected[0], atol=1e-5)


def test_image_folder_train_loader_workers_deterministic(image_root: Path) -> None:
    def run(workers: int, epoch: int) -> list[torch.Tensor]:
        loader = ImageFolderLoader(
            image_root, "train", 3, train=True, image_size=8, num_workers=workers, seed=1
        )
        loader.set_epoch(epoch)
        return [t for batch in loader for t in batch]

    in_process, in_workers = run(0, 0), run(1, 0)
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))
    assert in_process[0].shape == (3, 3, 8, 8)
    assert sorted(torch.cat(in_process[1::2]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert not torch.equal(in_process[0], run(0, 1)[0])
    with pytest.raises(DataError, match="image folder .*missing/train not found"):
        ImageFolder(image_root / "missing", "train", train=True)


def test_build_loaders_serves_image_folders_and_the_cli_trains_on_them(
    image_root: Path, tmp_path: Path
) -> None:
    train, val, split = build_loaders(
        "imagefolder", 4, root=image_root, limit_train=4, image_size=16, resize=18, num_workers=0
    )
    assert split.shape == (3, 16, 16) and split.num_classes == 2
    assert train.num_samples == 4 and {label for _, label in split.samples} == {0, 1}  # both classes kept
    x, y = next(iter(val))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    with pytest.raises(ConfigError, match="needs --data-root"):
        build_loaders("imagenet", 4)
    with pytest.raises(ConfigError, match="folder of encoded images"):
        load_dataset("imagenet")

    from prunekit.cli import main

    out = tmp_path / "run"
    argv = [
        "train",
        "--arch",
        "resnet18",
        "--data",
        "imagefolder",
        "--data-root",
        str(image_root),
        "--data-option",
        "image_size=32",
        "--data-option",
        "resize=36",
        "--data-option",
        "num_workers=0",
        "--batch-size",
        "3",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_shape"] == [3, 32, 32] and summary["dataset"] == "imagefolder"
