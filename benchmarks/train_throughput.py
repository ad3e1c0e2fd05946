"""Training throughput: a prunekit epoch vs a conventional per-image DataLoader pipeline.

Both pipelines train the same model (fresh, same seed, SGD momentum 0.9, wd 5e-4, constant lr) on the same
number of synthetic 3x32x32 images. The conventional one is the usual script: torchvision-style per-image
transforms (through PIL) in DataLoader workers and a plain training step. prunekit uses
`prunekit.data.DeviceLoader` and, by default, `prunekit.train.fit` (`--trainer step` gives it the same
plain step instead, so that only the data path differs). On CUDA prunekit adds bf16 autocast and
channels_last; the conventional script stays fp32, as such scripts usually are.

Epochs alternate between the pipelines (A B A B ...) so that load from other processes hits both alike;
images/s and CPU ms/image are medians over epochs.
A warm-up step per pipeline is excluded from the timing. On CUDA the time of a 50k-image ResNet-56 epoch
is printed too. Results and their reading: docs/benchmarks.md.

    python benchmarks/train_throughput.py --models resnet20,resnet56 --images 512 --epochs 6 --threads 2
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from prunekit.data import DeviceLoader, ImageTensorDataset, load_dataset
from prunekit.models import create
from prunekit.train import TrainConfig, fit

Batch = tuple[torch.Tensor, torch.Tensor]
LR = 0.05


class PerImageDataset(Dataset[Batch]):
    """What torchvision's CIFAR10 + RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize
    does for every image: PIL conversion, pad-crop, flip, float conversion, normalisation."""

    def __init__(self, data: ImageTensorDataset, crop_padding: int = 4) -> None:
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8, as CIFAR10 keeps it
        self.labels = data.labels
        self.mean = torch.tensor(data.mean).view(-1, 1, 1)
        self.std = torch.tensor(data.std).view(-1, 1, 1)
        self.pad = crop_padding

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        img = Image.fromarray(self.images[index])
        w, h = img.size
        img = ImageOps.expand(img, border=self.pad, fill=0)
        left, top = random.randint(0, 2 * self.pad), random.randint(0, 2 * self.pad)
        img = img.crop((left, top, left + w, top + h))
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return x.sub_(self.mean).div_(self.std), self.labels[index]


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children: the DataLoader workers, which exit after each
    epoch. Unlike wall time it hardly depends on what else runs on the machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTrainer:
    """The conventional training loop: move the batch, forward, cross-entropy, backward, SGD step."""

    def __init__(
        self,
        arch: str,
        loader: DataLoader | DeviceLoader,
        device: torch.device,
        *,
        bf16: bool = False,
        channels_last: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.model = create(arch).to(device).train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        self.loader, self.device, self.bf16, self.channels_last = loader, device, bf16, channels_last

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext():
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def warm_up(self) -> None:
        self.step(*next(iter(self.loader)))

    def epoch(self) -> tuple[int, float, float]:
        sync(self.device)
        start, cpu_start = time.perf_counter(), cpu_seconds()
        images, loss_sum = 0, torch.zeros((), device=self.device)
        for x, y in self.loader:
            loss_sum += self.step(x, y)
            images += len(y)
        sync(self.device)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        if not torch.isfinite(loss_sum):
            raise RuntimeError("training diverged (non-finite loss)")
        return images, seconds, cpu


class FitTrainer:
    """`prunekit.train.fit`, one epoch per call, timed by fit's own epoch time (evaluation excluded); the
    CPU time includes fit's one-batch evaluation, which only makes prunekit look worse."""

    def __init__(
        self, arch: str, loader: DeviceLoader, device: torch.device, batch_size: int, channels_last: str
    ) -> None:
        torch.manual_seed(0)
        self.model = create(arch)
        self.loader, self.device = loader, device
        self.cfg = TrainConfig(
            epochs=1,
            batch_size=batch_size,
            lr=LR,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="constant",
            channels_last=channels_last,
        )
        one_batch = loader.dataset.subset(slice(0, batch_size))
        self.tiny = DeviceLoader(one_batch, batch_size, train=False, device=device)

    def warm_up(self) -> None:
        fit(self.model, self.tiny, self.tiny, self.cfg, progress=False, device=self.device)

    def epoch(self) -> tuple[int, float, float]:
        cpu_start = cpu_seconds()
        result = fit(self.model, self.loader, self.tiny, self.cfg, progress=False, device=self.device)
        return self.loader.num_samples, result.history[-1]["epoch_time_s"], cpu_seconds() - cpu_start


def data_path_only(loader: DataLoader | DeviceLoader, device: torch.device) -> tuple[float, float]:
    """(images/s, CPU ms per image) of one pass over the loader with no training, after an untimed pass."""
    sum(len(y) for _, y in loader)
    sync(device)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    images = sum(len(x.to(device, non_blocking=True)) for x, _ in loader)
    sync(device)
    return images / (time.perf_counter() - start), 1e3 * (cpu_seconds() - cpu_start) / images


def _row(cells: tuple[object, ...]) -> str:
    widths = (10, 13, 8, 8, 9, 11)
    return " ".join(
        f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    # "auto" follows prunekit.train: channels_last for convolutional models, on CPU and GPU alike.
    prunekit_channels_last = args.channels_last in ("on", "auto")
    data = load_dataset("synthetic", num_samples=args.images, shape=(3, 32, 32), num_classes=10)
    conventional_loader = DataLoader(
        PerImageDataset(data), args.batch_size, shuffle=True, num_workers=args.workers, pin_memory=on_gpu
    )
    device_loader = DeviceLoader(data, args.batch_size, train=True, device=device, crop_padding=4, flip=True)
    prunekit_step = "prunekit.train.fit" if args.trainer == "fit" else "the same plain step as conventional"
    print(
        f"device {device}, torch {torch.__version__}, {args.threads} compute thread(s); "
        f"{args.images} synthetic 3x32x32 images x {args.epochs} epoch(s), batch {args.batch_size}\n"
        f"conventional: per-image PIL transforms, DataLoader with {args.workers} workers, plain step, fp32\n"
        f"prunekit: DeviceLoader + {prunekit_step}, channels_last {'on' if prunekit_channels_last else 'off'}"
        + (", bf16 autocast" if on_gpu else "")
    )
    lines = ["", "data path alone (no training):"]
    for name, loader in (("conventional", conventional_loader), ("prunekit", device_loader)):
        rate, cpu_ms = data_path_only(loader, device)
        lines.append(f"  {name:<13} {rate:>9.0f} images/s {cpu_ms:>7.3f} CPU ms/image")
    header = _row(("model", "pipeline", "images", "wall s", "images/s", "CPU ms/img"))
    lines += ["", header, "-" * len(header)]
    for arch in args.models:
        trainers: dict[str, StepTrainer | FitTrainer] = {
            "conventional": StepTrainer(arch, conventional_loader, device),
            "prunekit": (
                FitTrainer(arch, device_loader, device, args.batch_size, args.channels_last)
                if args.trainer == "fit"
                else StepTrainer(
                    arch, device_loader, device, bf16=on_gpu, channels_last=prunekit_channels_last
                )
            ),
        }
        for trainer in trainers.values():
            trainer.warm_up()
        epochs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in trainers}
        for _ in range(args.epochs):
            for name, trainer in trainers.items():
                epochs[name].append(trainer.epoch())
        # Medians over epochs: a burst of load from other processes spoils one epoch, not the result.
        rate = {name: statistics.median(n / wall for n, wall, _ in e) for name, e in epochs.items()}
        cpu_ms = {name: statistics.median(1e3 * cpu / n for n, _, cpu in e) for name, e in epochs.items()}
        for name, e in epochs.items():
            images, wall = sum(n for n, _, _ in e), sum(w for _, w, _ in e)
            cells = (arch, name, images, f"{wall:.2f}", f"{rate[name]:.1f}", f"{cpu_ms[name]:.2f}")
            lines.append(_row(cells))
        speedup = rate["prunekit"] / rate["conventional"]
        cpu_saving = cpu_ms["conventional"] / cpu_ms["prunekit"]
        lines.append(_row((arch, "ratio", "", "", f"{speedup:.2f}x", f"{cpu_saving:.2f}x")))
        if arch == "resnet56" and on_gpu:
            lines.append(f"ResNet-56, 50k-image epoch with prunekit: {50_000 / rate['prunekit']:.2f} s")
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56", type=lambda s: s.split(","))
    parser.add_argument("--images", type=int, default=5120, help="images per epoch (synthetic)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch compute threads")
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--trainer", default="fit", choices=["fit", "step"], help="prunekit's training loop")
    parser.add_argument(
        "--channels-last",
        default="auto",
        choices=["auto", "on", "off"],
        help="prunekit's memory format (TrainConfig.channels_last; auto = on for CUDA only)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        run(args)
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    main()
