from __future__ import annotations

import warnings
from typing import ClassVar

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure.deployment import deploy, fold_batchnorm
from prunekit.measure.timing import compare_latency, latency
from prunekit.models import create
from prunekit.models.layers import ZeroPadShortcut


def _randomise_bn(model: nn.Module) -> nn.Module:
    # Fresh BN statistics are the identity map; random ones make a wrong fold visible.
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 4, 1, bias=True)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn_b(self.conv_b(torch.relu(self.bn(self.conv(x))))))


class Residual(nn.Module):
    """A CIFAR ResNet block with the zoo's option-A shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.shortcut = ZeroPadShortcut(4, 8, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ConvOutputReused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class BnAfterPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(self.conv(x)))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y  # data-dependent branch: fx cannot trace it


def _kinds(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if not list(m.children())]


def _check_equal(model: nn.Module, folded: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_conv_bn_relu_removes_both_bns_and_keeps_outputs() -> None:
    model = _randomise_bn(ConvBnRelu())
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.Identity) and isinstance(folded.bn_b, nn.Identity)
    assert folded.conv.bias is not None and folded.conv.bias.shape == (8,)
    assert not folded.training
    _check_equal(model, folded, (2, 3, 8, 8))
    assert isinstance(model.bn, nn.BatchNorm2d), "the original must not be modified"


def test_fold_matches_hand_computed_scale_and_shift() -> None:
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(2.0)
    bn = nn.BatchNorm2d(1, eps=0.0)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    bn.weight.data.fill_(3.0)
    bn.bias.data.fill_(0.5)
    folded = fold_batchnorm(nn.Sequential(conv, bn))
    # y = 3 * (2x - 1) / 2 + 0.5 = 3x - 1
    assert folded[0].weight.item() == pytest.approx(3.0)
    assert folded[0].bias.item() == pytest.approx(-1.0)


def test_fold_residual_block_with_zero_pad_shortcut() -> None:
    model = _randomise_bn(Residual())
    folded = fold_batchnorm(model)
    assert "BatchNorm2d" not in _kinds(folded)
    assert isinstance(folded.shortcut, ZeroPadShortcut)
    _check_equal(model, folded, (3, 4, 8, 8))


def test_bn_not_folded_when_conv_output_is_used_elsewhere() -> None:
    model = _randomise_bn(ConvOutputReused())
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    assert folded.conv.bias is None
    _check_equal(model, folded, (2, 3, 6, 6))


def test_bn_after_a_non_conv_is_left_alone() -> None:
    model = _randomise_bn(BnAfterPool())
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    torch.testing.assert_close(folded.conv.weight, model.conv.weight)
    _check_equal(model, folded, (2, 3, 8, 8))


def test_bn_called_twice_is_not_folded() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.a(x)) + self.bn(self.b(x))

    model = _randomise_bn(Shared())
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    _check_equal(model, folded, (2, 3, 4, 4))


def test_untraceable_model_is_returned_unfolded_with_a_warning() -> None:
    model = _randomise_bn(Untraceable())
    with pytest.warns(UserWarning, match="cannot be traced"):
        folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    assert not folded.training
    _check_equal(model, folded, (2, 3, 5, 5))


@pytest.mark.parametrize("mode", ["freeze", "eager"])
def test_deploy_matches_eager_model(mode: str) -> None:
    model = _randomise_bn(Residual())
    run = deploy(model, torch.randn(2, 4, 8, 8), mode=mode)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_deploy_compile_matches_eager_model() -> None:
    model = _randomise_bn(ConvBnRelu())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deploy(model, x, mode="compile")(x), model(x), rtol=1e-4, atol=1e-4)


def test_deploy_rejects_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="unknown deploy mode 'onnx'"):
        deploy(ConvBnRelu(), torch.randn(1, 3, 4, 4), mode="onnx")  # type: ignore[arg-type]


def test_latency_statistics_are_consistent_and_threads_restored() -> None:
    before = torch.get_num_threads()
    result = latency(
        _randomise_bn(ConvBnRelu()), (3, 8, 8), batch_size=4, threads=1, warmup=2, repeats=9, rounds=3
    )
    assert torch.get_num_threads() == before
    assert len(result.samples) == 9
    assert min(result.samples) <= result.median_ms <= max(result.samples)
    assert result.spread_ms >= 0
    assert result.per_image_ms == pytest.approx(result.median_ms / 4)
    assert (result.batch_size, result.threads, result.mode, result.device) == (4, 1, "freeze", "cpu")
    text = str(result)
    assert "batch 4" in text and "1 thread" in text and "torch.jit.freeze" in text


def test_compare_latency_times_every_model_and_leaves_them_untouched() -> None:
    models = {"a": _randomise_bn(ConvBnRelu()), "b": _randomise_bn(ConvBnRelu())}
    models["b"].train()
    results = compare_latency(models, (3, 8, 8), deployed=False, warmup=1, repeats=4, rounds=2)
    assert set(results) == {"a", "b"}
    assert all(len(r.samples) == 4 and r.mode == "raw" for r in results.values())
    assert "as given" in str(results["a"])
    assert models["b"].training and isinstance(models["a"].bn, nn.BatchNorm2d)


def test_thread_count_restored_when_the_model_fails() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latency(ConvBnRelu(), (5, 8, 8), threads=before + 1, deployed=False, warmup=1, repeats=1)
    assert torch.get_num_threads() == before


def test_latency_rejects_nonsense_settings() -> None:
    with pytest.raises(ConfigError, match="batch_size=0"):
        latency(ConvBnRelu(), (3, 8, 8), batch_size=0)


def test_fold_zoo_resnet20_removes_every_bn() -> None:
    model = _randomise_bn(create("resnet20"))
    folded = fold_batchnorm(model)
    assert _kinds(model).count("BatchNorm2d") == 19
    assert "BatchNorm2d" not in _kinds(folded)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        # Random BN statistics grow the activations through 19 layers; compare relative to their scale.
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_masked_conv_is_not_folded() -> None:
    model = _randomise_bn(ConvBnRelu())
    with torch.no_grad():  # else the masked weight is a non-leaf tensor, which deepcopy refuses
        torch.nn.utils.prune.l1_unstructured(model.conv, "weight", amount=0.5)
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    assert isinstance(folded.bn_b, nn.Identity)
    _check_equal(model, folded, (2, 3, 8, 8))


def test_bn_without_running_statistics_is_not_folded() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.BatchNorm2d)
    _check_equal(model, folded, (2, 3, 6, 6))


class _Recorder(nn.Module):
    calls: ClassVar[list[str]] = []  # class-level, so it survives the deepcopy latency makes

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _Recorder.calls.append(self.tag)
        return x


def test_compare_latency_interleaves_models_round_by_round() -> None:
    _Recorder.calls.clear()
    results = compare_latency(
        {"a": _Recorder("a"), "b": _Recorder("b")}, (1,), deployed=False, warmup=1, repeats=4, rounds=2
    )
    # Warm-up of each, then per round and model: one untimed re-warm call and two timed calls.
    assert _Recorder.calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert [len(r.samples) for r in results.values()] == [4, 4]
