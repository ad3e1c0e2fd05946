"""ONNX export: round trips (onnxruntime output = PyTorch output) for a pruned ResNet-56, a low-rank model, a
masked model and a user model on real MNIST images; the dynamic batch axis; atomic writes; the layer named
when ONNX cannot express it; the CLI (`prunekit export`, `prunekit profile --runtime onnxruntime`)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import prunekit
from prunekit import export as onnx_export
from prunekit import model_file
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.export import ExportError, export_onnx, onnx_session
from prunekit.models import create
from prunekit.surgery import apply
from prunekit.surgery.lowrank import LowRankConv2d, decompose
from prunekit.surgery.plan import MaskPlan

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = onnx_session(path)
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def assert_round_trip(model: nn.Module, x: torch.Tensor, path: Path) -> onnx_export.ExportReport:
    report = export_onnx(model, x, path)
    assert path.is_file() and report.bytes == path.stat().st_size
    assert report.checked_batches == (len(x), 1) and report.max_abs_diff < 1e-4
    # an independent check, at a batch size the export never saw (the batch axis is dynamic)
    other = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(other)
    torch.testing.assert_close(run_onnx(path, other), expected, atol=1e-4, rtol=1e-4)
    assert not list(path.parent.glob(".*.tmp")), "no temporary file left behind"
    return report


def test_pruned_resnet56_round_trip(tmp_path: Path) -> None:
    model = create("resnet56").eval()
    x = torch.randn(4, 3, 32, 32)
    small = prunekit.prune(model, x, method="l1", ratio=0.5, round_to=8)
    # trained-looking BN statistics, so that folding them is really exercised
    with torch.no_grad():
        for m in small.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    report = assert_round_trip(small, x, tmp_path / "r56.onnx")
    assert report.folded_batchnorms == 55  # every conv's BN (the FC has none)


def test_lowrank_model_round_trip(tmp_path: Path) -> None:
    model = create("resnet20").eval()
    small = decompose(model, {"layer1.0.conv1": ("NC", 4), "layer2.1.conv2": ("VH", 8)})
    assert isinstance(small.get_submodule("layer1.0.conv1"), LowRankConv2d)
    assert_round_trip(small, torch.randn(2, 3, 32, 32), tmp_path / "lowrank.onnx")


def test_masked_model_round_trip(tmp_path: Path) -> None:
    model = create("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    weight = model.get_submodule("conv1").weight
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    masked = apply(model, MaskPlan({"conv1.weight": mask}), x)
    assert int((masked.get_submodule("conv1").weight == 0).sum()) == int((~mask).sum())
    assert_round_trip(masked, x, tmp_path / "masked.onnx")


class UserNet(nn.Module):
    """A user's own model (not in the zoo): conv-BN-ReLU, a functional max-pool, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 5)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 12 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(x.flatten(1))


def mnist_images(root: Path, n: int) -> torch.Tensor:
    with gzip.open(root / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: n * 784]
    return torch.from_numpy(raw.copy()).reshape(n, 1, 28, 28).float().div(255).sub(0.1307).div(0.3081)


def test_user_model_on_real_mnist(tmp_path: Path, shared_data: Path) -> None:
    model = UserNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    assert_round_trip(model, mnist_images(shared_data, 16), tmp_path / "user.onnx")


class Spectrum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).abs()


def test_op_onnx_cannot_express_names_the_layer(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), Spectrum(), nn.Flatten(), nn.Linear(4 * 26 * 26, 2)).eval()
    out = tmp_path / "fft.onnx"
    with pytest.raises(ExportError, match=r"layer '1' \(Spectrum\): .*fft"):
        export_onnx(model, torch.randn(2, 1, 28, 28), out)
    assert not out.exists()


def test_mismatch_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setattr(onnx_export, "ATOL", -1.0)  # no output can match: the check must refuse
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_onnx(create("lenet5"), torch.randn(2, 1, 28, 28), out)
    assert out.read_bytes() == b"previous" and not list(tmp_path.glob(".*.tmp"))


def test_bad_arguments_and_missing_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create("lenet5")
    with pytest.raises(ConfigError, match=r"\.onnx file"):
        export_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="real inputs"):
        export_onnx(model, torch.randn(0, 1, 28, 28), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'prunekit\[onnx\]'"):
        export_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")


SYNTH = ["--data", "synthetic", "--data-option", "shape=1x28x28", "--limit-test", "16"]


def test_cli_export_and_profile_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    small = prunekit.prune(model, x, method="l1", ratio=0.5)
    path = model_file.save(small, tmp_path / "model.safetensors", info={"input_shape": [1, 28, 28]})
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out), *SYNTH]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime matches PyTorch on real inputs at batch 8, 1" in printed
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(out, x), small.eval()(x), atol=1e-4, rtol=1e-4)
    assert (
        main(["profile", str(path), "--batch-sizes", "2", "--threads", "1", "--runtime", "onnxruntime"]) == 0
    )
    printed = capsys.readouterr().out
    assert "onnxruntime" in printed and "batch 2, 1 thread(s)" in printed
    assert main(["export", str(path), "--out", str(tmp_path / "x.txt"), *SYNTH]) == 2
    assert "writes a .onnx file" in capsys.readouterr().err
