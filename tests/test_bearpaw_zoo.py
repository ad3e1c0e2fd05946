"""The bearpaw/pytorch-classification CIFAR zoo: parameter counts against bearpaw's README table (10-class
heads, every parameter counted as bearpaw's `cifar.py` prints it), bearpaw's key names, and pruning with
every criterion equal to masking on small versions of the same definitions."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit import model_file
from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.models.alexnet import CifarAlexNet
from prunekit.models.densenet_bc import DenseNetBC
from prunekit.models.preresnet import PreResNet, bearpaw_blocks
from prunekit.models.resnet_cifar import BottleneckResNet
from prunekit.models.resnext import CifarResNeXt
from prunekit.models.vgg import BearpawVGG19BN
from prunekit.models.wide_resnet import WideResNet
from prunekit.surgery import apply

#: bearpaw's README table (CIFAR-10), in millions of parameters.
TABLE = {
    "alexnet_cifar": 2.47,
    "vgg19_bn_bearpaw": 20.04,
    "resnet110_bearpaw": 1.70,
    "preresnet110": 1.70,
    "wrn28_10": 36.48,
    "resnext29_8x64d": 34.43,
    "resnext29_16x64d": 68.16,
    "densenet_bc100_12": 0.77,
    "densenet_bc190_40": 25.62,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", TABLE)
def test_parameter_counts_match_bearpaws_table(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create(name)
    assert round(n_params(model) / 1e6, 2) == TABLE[name]


def test_alexnet_count_by_hand() -> None:
    # conv 3→64 k11, 64→192 k5, 192→384 k3, 384→256 k3, 256→256 k3 (weights + biases), Linear 256→10.
    by_hand = (
        (3 * 64 * 121 + 64) + (64 * 192 * 25 + 192) + (192 * 384 * 9 + 384) + (384 * 256 * 9 + 256)
        + (256 * 256 * 9 + 256) + (256 * 10 + 10)
    )  # fmt: skip
    assert by_hand == 2_472_266
    with torch.device("meta"):
        assert n_params(create("alexnet_cifar")) == by_hand


def test_bearpaws_110_is_18_bottlenecks_per_stage_and_the_zoos_resnet110_is_not_it() -> None:
    # bearpaw's table was measured when its code built depth >= 44 from Bottlenecks, (depth - 2) // 6 per
    # stage; He et al.'s BasicBlock ResNet-110 (the zoo's `resnet110`, option B as bearpaw) is 1.73M.
    assert bearpaw_blocks(110) == (18, True) and bearpaw_blocks(20) == (3, False)
    with torch.device("meta"):
        assert n_params(create("resnet110", shortcut="B")) == 1_730_714
        assert n_params(create("resnet110_bearpaw")) == 1_704_154
        assert n_params(create("preresnet110")) == 1_703_258
    with pytest.raises(ConfigError, match="depth must be 6n\\+2"):
        bearpaw_blocks(111)


def test_key_names_are_bearpaws() -> None:
    with torch.device("meta"):
        keys = {name: set(create(name).state_dict()) for name in TABLE}
    expected = {
        "alexnet_cifar": {"features.0.bias", "features.10.weight", "classifier.weight"},
        "vgg19_bn_bearpaw": {
            "features.0.bias", "features.1.running_var", "features.49.weight", "classifier.bias",
        },
        "resnet110_bearpaw": {
            "conv1.weight", "bn1.weight", "layer3.17.conv3.weight", "layer2.0.shortcut.1.weight",
        },
        "preresnet110": {
            "layer1.0.bn1.weight", "layer3.17.conv3.weight", "layer2.0.shortcut.0.weight", "bn.weight",
        },
        "wrn28_10": {
            "block1.layer.0.convShortcut.weight", "block3.layer.3.conv2.weight", "bn1.weight", "fc.bias",
        },
        "resnext29_8x64d": {
            "conv_1_3x3.weight", "bn_1.weight", "stage_3.stage_3_bottleneck_2.conv_conv.weight",
            "stage_2.stage_2_bottleneck_0.shortcut.shortcut_bn.weight", "classifier.weight",
        },
        "densenet_bc100_12": {
            "conv1.weight", "dense3.15.conv2.weight", "trans2.conv1.weight", "bn.weight", "fc.weight",
        },
    }  # fmt: skip
    for name, subset in expected.items():
        assert subset <= keys[name], (name, subset - keys[name])
    # bearpaw's `downsample` projection is the zoo's `shortcut` (prunekit import --from bearpaw renames it).
    assert not any("downsample" in k for ks in keys.values() for k in ks)
    with torch.device("meta"):
        groups = create("resnext29_16x64d").stage_1.stage_1_bottleneck_0.conv_conv
    assert (groups.groups, groups.in_channels, groups.out_channels) == (16, 1024, 1024)


# ---------------------------------------------------------------- pruning the families


#: Small versions of each definition (same classes, fewer blocks or narrower): pruning them exercises the
#: same code paths as the tabled sizes in a fraction of a second.
SMALL: dict[str, Callable[[], nn.Module]] = {
    "alexnet": lambda: CifarAlexNet(),
    "vgg19_bn": lambda: BearpawVGG19BN(),
    "resnet_bottleneck": lambda: BottleneckResNet(2),
    "preresnet": lambda: PreResNet(2, bottleneck=True),
    "wrn": lambda: WideResNet(10, widen_factor=2, drop=0.3),
    "resnext": lambda: CifarResNeXt(cardinality=2, depth=11, widen_factor=4),
    "densenet_bc": lambda: DenseNetBC(16, growth=6),
}
METHODS = ("l1", "fpgm", "random", "hrank", "slimming")
X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def neutralised(model: nn.Module) -> nn.Module:
    """A copy in eval mode with every bias, BN shift and running mean zero and random BN scales: a zeroed
    channel then stays zero through BN and ReLU, so removing it must equal zeroing it."""
    model = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, _BatchNorm):
                m.bias.zero_()
                m.running_mean.zero_()
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.1)
    return model


def masked(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """`model` with the output channels the plan removes zeroed (weights of those filters set to 0)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, kept in plan.items():
            layer = model.get_submodule(name)
            gone = torch.ones(layer.weight.shape[0], dtype=torch.bool)
            gone[kept] = False
            layer.weight[gone] = 0
    return model


CASES = [
    (family, method)
    for family in SMALL
    for method in METHODS
    if not (family == "alexnet" and method == "slimming")
]


@pytest.mark.parametrize(("family", "method"), CASES)
def test_pruning_at_0_3_equals_masking(family: str, method: str) -> None:
    model = neutralised(SMALL[family]())
    options = {"ratio": 0.3} if method == "slimming" else {"rates": "0.3"}
    if method == "hrank":
        options["n_images"] = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HRank's fallback taps, slimming's not-eligible layers
        plan = create_method(method, **options).plan(model, X)
        pruned = apply(model, plan, X[:1])
    assert plan and any(len(kept) < model.get_submodule(name).weight.shape[0] for name, kept in plan.items())
    for name, kept in plan.items():
        assert pruned.get_submodule(name).weight.shape[0] == len(kept)
    assert n_params(pruned) < n_params(model)
    with torch.no_grad():
        expected, got = masked(model, plan)(X), pruned.eval()(X)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.abs().max())))


def test_alexnet_has_no_batchnorm_so_slimming_refuses_it_by_name() -> None:
    with pytest.raises(ConfigError, match="none of the selected layers has one: features.0, features.3"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            create_method("slimming", ratio=0.3).plan(CifarAlexNet(), X)


@pytest.mark.parametrize("family", ["preresnet", "wrn", "densenet_bc"])
def test_a_pruned_model_round_trips_through_its_file(family: str, tmp_path) -> None:
    import prunekit

    model = SMALL[family]().eval()
    pruned = prunekit.prune(model, X[:1], method="l1", rates=0.3).eval()
    model_file.save(pruned, tmp_path / "m.safetensors")
    again = model_file.load(tmp_path / "m.safetensors", model=SMALL[family]()).eval()
    with torch.no_grad():
        assert torch.equal(again(X), pruned(X))
