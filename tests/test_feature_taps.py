"""Feature-map taps, the zoo metadata HRank and the redundancy graph read (`models.feature_taps`)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.methods.hrank.layouts import Tap, layout_for
from prunekit.models import FeatureTap, create, default_input_shape, feature_taps, list_models
from prunekit.models.probe import probe

#: The zoo models whose activation taps are HRank's hooks; the others declare none (the bearpaw models:
#: HRank has no layout for them, so it takes its fallback taps).
UNDECLARED = {"vgg19_bn", "lenet300_100", "alexnet_cifar", "preresnet110", "resnet110_bearpaw", "wrn28_10"}
UNDECLARED |= {"vgg19_bn_bearpaw", "resnext29_8x64d", "resnext29_16x64d", "densenet_bc100_12"}
UNDECLARED |= {"densenet_bc190_40"}


def small_input(name: str) -> Tensor:
    c, h, w = default_input_shape(name)
    # The ImageNet ResNets are fully convolutional up to an adaptive pool; 64×64 keeps the test fast.
    return torch.randn(2, c, *((64, 64) if h == 224 else (h, w)))


def tapped_outputs(model: nn.Module, taps: tuple[FeatureTap, ...], example: Tensor) -> dict[str, Tensor]:
    """The forward output of every tapped module, by name."""
    modules = dict(model.named_modules())
    outputs: dict[str, Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            assert name not in outputs, f"{name} runs more than once per forward"
            outputs[name] = output.clone()  # in-place ReLUs later in the forward must not change it

        return hook

    names = dict.fromkeys(t.module for t in taps)
    probe(model, example, [modules[name].register_forward_hook(keep(name)) for name in names])
    return outputs


def check_taps(model: nn.Module, taps: tuple[FeatureTap, ...], example: Tensor) -> None:
    modules = dict(model.named_modules())
    assert len({t.conv for t in taps}) == len(taps), "one tap per conv"
    for tap in taps:
        assert isinstance(modules[tap.conv], nn.Conv2d), tap
        assert tap.module in modules, tap
    outputs = tapped_outputs(model, taps, example)
    for tap in taps:
        maps = outputs[tap.module][:, tap.start : tap.stop]
        assert maps.dim() == 4 and maps.shape[1] == modules[tap.conv].out_channels, tap


@pytest.mark.parametrize("name", sorted(set(list_models()) - UNDECLARED))
def test_activation_taps_cover_the_ranked_convs_and_give_their_channels(name: str) -> None:
    torch.manual_seed(0)
    model = create(name)
    taps = feature_taps(model, "activation")
    assert taps is not None
    # Exactly the convs HRank ranks: those its compress_rate entries prune.
    layout = layout_for(model)
    assert not layout.fallback and layout.taps == taps
    assert {t.conv for t in taps} == {conv for convs in layout.entries for conv in convs}
    check_taps(model, taps, small_input(name))


@pytest.mark.parametrize("name", list_models())
def test_conv_taps_are_every_conv_itself(name: str) -> None:
    model = create(name)
    taps = feature_taps(model, "conv")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert taps == tuple(FeatureTap(conv, conv) for conv in convs)
    check_taps(model, taps, small_input(name))


def test_activation_taps_where_hrank_hooks_them() -> None:
    with torch.device("meta"):
        vgg, resnet, googlenet = create("vgg16_bn"), create("resnet56", shortcut="B"), create("googlenet")
    vgg_taps = {t.conv: t.module for t in feature_taps(vgg) or ()}
    assert vgg_taps["features.0"] == "features.2" and vgg_taps["features.3"] == "features.6"  # pooled
    assert "features.40" not in vgg_taps  # HRank never ranks conv13
    resnet_taps = {t.conv: t.module for t in feature_taps(resnet) or ()}
    assert resnet_taps["layer2.0.conv2"] == "layer2.0.relu2"  # after the residual add
    assert "layer2.0.shortcut.0" not in resnet_taps
    inception = [t for t in feature_taps(googlenet) or () if t.conv.startswith("e4.")]
    assert [(t.module, t.start, t.stop) for t in inception] == [
        ("maxpool2", 0, 256), ("maxpool2", 256, 576), ("maxpool2", 576, 704), ("maxpool2", 576, 704),
        ("maxpool2", 704, 832),
    ]  # fmt: skip


def test_models_without_declarations_have_no_activation_taps() -> None:
    user = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    for model in (create("vgg19_bn"), create("lenet300_100"), user):
        assert feature_taps(model, "activation") is None
    assert feature_taps(user, "conv") == (FeatureTap("0", "0"),)
    assert feature_taps(create("lenet300_100"), "conv") == ()


def test_a_user_model_can_declare_its_taps() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()

        def activation_taps(self) -> tuple[FeatureTap, ...]:
            return (FeatureTap("conv", "act"),)

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.bn(self.conv(x)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # declared taps: no fallback notice
        layout = layout_for(Net())
    assert layout.taps == (Tap("conv", "act"),) and layout.entries == (("conv",),) and not layout.fallback


def test_unknown_tap_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown feature tap kind 'bn'; valid feature tap kinds"):
        feature_taps(create("lenet5"), "bn")  # type: ignore[arg-type]
