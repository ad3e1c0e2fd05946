"""DeviceLoader: sharding, determinism, batched crop/flip/normalisation with hand-computed pixels."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from prunekit.data import DeviceLoader, ImageTensorDataset, build_loaders, load_dataset, standard_augmentation
from prunekit.data.augment import CropFlipParams, crop_flip
from prunekit.data.catalog import Augmentation
from prunekit.errors import ConfigError


def indexed(n: int, shape: tuple[int, int, int] = (1, 2, 2)) -> ImageTensorDataset:
    """Label i for sample i, so the labels of a batch are the sample indices it holds."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, *shape).contiguous()
    return ImageTensorDataset(
        images, torch.arange(n), tuple(map(str, range(n))), (0.0,) * shape[0], (1.0,) * shape[0], "indexed"
    )


def order_of(loader: DeviceLoader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def test_crop_flip_hand_computed_pixels() -> None:
    # channel 0 = 1..9, channel 1 = 10 x channel 0; padding 1 makes a 5x5 padded image with zero border
    base = torch.arange(1, 10, dtype=torch.uint8).view(3, 3)
    images = torch.stack([base, base * 10])[None].repeat(4, 1, 1, 1)
    params = CropFlipParams(
        top=torch.tensor([0, 2, 1, 0]),
        left=torch.tensor([0, 2, 1, 2]),
        flip=torch.tensor([False, False, True, True]),
    )
    out = crop_flip(images, 1, params)
    assert out.dtype == torch.uint8 and out.shape == (4, 2, 3, 3)
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # shifted down-right, zeros fill in
    assert out[1, 0].tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]  # shifted up-left
    assert out[2, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]  # centred window, columns reversed
    assert out[3, 0].tolist() == [[0, 0, 0], [0, 3, 2], [0, 6, 5]]  # right-shifted window, then mirrored
    assert torch.equal(out[:, 1], out[:, 0] * 10)  # channels move together
    unpadded = crop_flip(
        images[:1], 0, CropFlipParams(torch.tensor([0]), torch.tensor([0]), torch.tensor([True]))
    )
    assert torch.equal(unpadded[0], images[0].flip(-1))


def test_normalisation_values_exact() -> None:
    images = torch.tensor([0, 51, 255, 102], dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    data = ImageTensorDataset(images, torch.tensor([0]), ("a",), (0.5, 0.2), (0.25, 0.4), "tiny")
    ((x, y),) = list(DeviceLoader(data, 1, train=False))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x[0, 0], torch.tensor([[-2.0, -1.2], [2.0, -0.4]]), atol=1e-6)
    assert torch.allclose(x[0, 1], torch.tensor([[-0.5, 0.0], [2.0, 0.5]]), atol=1e-6)
    ((raw, _),) = list(DeviceLoader(data, 1, train=False, normalize=False))
    assert torch.allclose(raw[0, 0], torch.tensor([[0.0, 0.2], [1.0, 0.4]]), atol=1e-7)


def test_deterministic_per_seed_and_epoch() -> None:
    data = indexed(50, (3, 6, 6))
    data.images = torch.randint(0, 256, data.images.shape, dtype=torch.uint8)
    a = DeviceLoader(data, 16, train=True, crop_padding=2, flip=True, seed=3)
    b = DeviceLoader(data, 16, train=True, crop_padding=2, flip=True, seed=3)
    first = [x for x, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(first, [x for x, _ in b], strict=True))
    assert order_of(a) == order_of(b) and sorted(order_of(a)) == list(range(50))
    a.set_epoch(1)
    assert order_of(a) != order_of(b)
    a.set_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(first, [x for x, _ in a], strict=True))
    assert order_of(DeviceLoader(data, 16, train=True, seed=4)) != order_of(b)
    assert order_of(DeviceLoader(data, 16, train=False)) == list(range(50))


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_rank_shards_match_distributed_sampler(drop_last: bool) -> None:
    data = indexed(11)
    shards = []
    for rank in range(2):
        loader = DeviceLoader(data, 4, train=True, seed=5, rank=rank, world_size=2, drop_last=drop_last)
        loader.set_epoch(2)
        sampler = DistributedSampler(
            range(11), num_replicas=2, rank=rank, shuffle=True, seed=5, drop_last=drop_last
        )
        sampler.set_epoch(2)
        expected = list(sampler)
        got = torch.cat([y for _, y in loader]).tolist()
        assert loader.num_samples == len(expected) == (5 if drop_last else 6)
        # drop_last also drops the last incomplete batch: 5 samples in batches of 4 -> 4 used
        assert got == (expected[:4] if drop_last else expected)
        shards.append(expected)
    if drop_last:
        assert set(shards[0]).isdisjoint(shards[1]) and len(set(shards[0] + shards[1])) == 10
    else:
        assert set(shards[0] + shards[1]) == set(range(11))  # covers everything; one index wraps around
        assert len(shards[0] + shards[1]) == 12


def test_batch_counts_and_drop_last() -> None:
    data = indexed(10)
    keep = DeviceLoader(data, 4, train=False)
    drop = DeviceLoader(data, 4, train=False, drop_last=True)
    assert len(keep) == 3 and [len(y) for _, y in keep] == [4, 4, 2] and keep.num_samples == 10
    assert len(drop) == 2 and [len(y) for _, y in drop] == [4, 4]


def test_augmented_batches_are_valid_crops_and_flips_of_their_sources() -> None:
    torch.manual_seed(1)
    images = torch.randint(1, 256, (64, 2, 4, 5), dtype=torch.uint8)  # no zeros in the source
    data = ImageTensorDataset(
        images, torch.arange(64), tuple(map(str, range(64))), (0.0, 0.0), (1.0, 1.0), "rand"
    )
    loader = DeviceLoader(data, 32, train=True, crop_padding=2, flip=True, normalize=False)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    windows = {  # every allowed (top, left, flip) view of every source image
        (t, l, f): padded[:, :, t : t + 4, l : l + 5].flip(-1) if f else padded[:, :, t : t + 4, l : l + 5]
        for t in range(5)
        for l in range(5)
        for f in (False, True)
    }
    seen = set()
    for x, y in loader:
        got = (x * 255).round().to(torch.uint8)
        for image, index in zip(got, y.tolist(), strict=True):
            matches = [key for key, view in windows.items() if torch.equal(image, view[index])]
            assert matches, f"sample {index} is no crop/flip of its source"
            seen.update(matches)
    assert {f for _, _, f in seen} == {False, True} and len({(t, l) for t, l, _ in seen}) > 10


def test_build_loaders_on_embedded_data() -> None:
    train, test, train_set = build_loaders(
        "fashion_mnist_mini", 100, limit_train=250, limit_test=30, eval_batch_size=16, seed=2
    )
    assert len(train_set) == 250 and train.num_samples == 250 and len(train) == 3
    assert test.num_samples == 30 and len(test) == 2 and not test.shuffle and train.shuffle
    assert (train.crop_padding, train.flip) == (0, False)
    x, y = next(iter(test))
    assert x.shape == (16, 1, 28, 28) and y[:4].tolist() == [9, 2, 1, 1]
    first = load_dataset("fashion_mnist_mini", "test").images[0].double()
    assert torch.allclose(x[0].double(), (first / 255 - 0.2860) / 0.3530, atol=1e-5)
    assert standard_augmentation("cifar10") == Augmentation(4, True) == standard_augmentation("cifar100")
    assert standard_augmentation("mnist") == Augmentation(0, False)
    s_train, _, s_set = build_loaders("synthetic", 8, num_samples=20, shape=(3, 4, 4), num_classes=2)
    assert s_set.images.shape == (20, 3, 4, 4) and len(s_train) == 3


def test_loader_argument_errors() -> None:
    data = indexed(4)
    with pytest.raises(ConfigError, match="evaluation loaders do not augment"):
        DeviceLoader(data, 2, train=False, crop_padding=4)
    with pytest.raises(ConfigError, match=r"rank must be in \[0, world_size=2\), got 2"):
        DeviceLoader(data, 2, train=True, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        DeviceLoader(data, 0, train=True)
    with pytest.raises(ConfigError, match="limit_train must be >= 1, got 0"):
        build_loaders("fashion_mnist_mini", 8, limit_train=0)
