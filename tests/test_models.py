"""The model zoo: shapes, layouts the papers' code indexes into, and constructor errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import create, default_input_shape, list_models, model_entry
from prunekit.models.layers import ZeroPadShortcut

CIFAR_NETS = [n for n in list_models() if model_entry(n).input_size == (32, 32)]
IMAGENET_NETS = ["resnet18", "resnet34", "resnet50"]


def small_input_shape(name: str) -> tuple[int, int, int]:
    c, h, w = default_input_shape(name)
    # ImageNet nets are fully convolutional up to an adaptive pool; 64×64 keeps the test fast.
    return (c, 64, 64) if h == 224 else (c, h, w)


def test_registry_lists_the_whole_zoo() -> None:
    assert list_models() == sorted(
        ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16_bn", "vgg19_bn", "densenet40"]
        + ["googlenet", "lenet300_100", "lenet5", "resnet18", "resnet34", "resnet50"]
        + ["alexnet_cifar", "preresnet110", "resnet110_bearpaw", "wrn28_10", "vgg19_bn_bearpaw"]
        + ["resnext29_8x64d", "resnext29_16x64d", "densenet_bc100_12", "densenet_bc190_40"]
    )
    assert default_input_shape("resnet56") == (3, 32, 32)
    assert default_input_shape("lenet5") == (1, 28, 28)
    assert default_input_shape("resnet50") == (3, 224, 224)
    assert (model_entry("vgg19_bn").num_classes, model_entry("resnet50").num_classes) == (100, 1000)


@pytest.mark.parametrize("name", list_models())
def test_forward_gives_logits_and_runs_each_leaf_module_once(name: str) -> None:
    model = create(name).eval()
    assert model.prunekit_arch["name"] == name
    # Hooks (HRank ranks, activation statistics) are matched by module identity: a ReLU or pool
    # reused twice in one forward would mix two layers' maps.
    calls: Counter[str] = Counter()
    names = {m: n for n, m in model.named_modules()}
    handles = [
        m.register_forward_hook(lambda mod, i, o: calls.update([names[mod]]))
        for m in model.modules()
        if next(m.children(), None) is None
    ]
    with torch.no_grad():
        out = model(torch.randn(2, *small_input_shape(name)))
    for h in handles:
        h.remove()
    assert out.shape == (2, model_entry(name).num_classes)
    assert max(calls.values()) == 1
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert relus and all(calls[n] == 1 for n in relus)


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_cifar_nets_take_mnist_shaped_inputs(name: str) -> None:
    model = create(name, num_classes=7, in_channels=1).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.prunekit_arch == {"name": name, "kwargs": {"num_classes": 7, "in_channels": 1}}


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet57'; valid models: alexnet_cifar, dense"):
        create("resnet57")


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown ResNet shortcut 'C'; valid shortcuts: 'A'.*'B'"):
        create("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match=r"model 'vgg16_bn': .*unexpected keyword argument 'shortcut'"):
        create("vgg16_bn", shortcut="A")


def test_zero_pad_shortcut_equals_padding_the_subsampled_input() -> None:
    x = torch.randn(2, 16, 8, 8)
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))  # 16 → 32 channels: 8 zeros each side
    assert torch.equal(ZeroPadShortcut(16, 32, 2)(x), expected)


def test_cifar_resnet_shortcuts_option_a_and_b() -> None:
    a, b = create("resnet20"), create("resnet20", shortcut="B")
    for block, kind in [
        (a.layer1[0], nn.Identity),
        (a.layer2[0], ZeroPadShortcut),
        (a.layer2[1], nn.Identity),
    ]:
        assert type(block.shortcut) is kind
    proj = b.layer3[0].shortcut
    assert isinstance(proj, nn.Sequential) and isinstance(proj[1], nn.BatchNorm2d)
    assert (proj[0].in_channels, proj[0].out_channels, proj[0].kernel_size, proj[0].stride) == (
        32,
        64,
        (1, 1),
        (2, 2),
    )
    assert proj[0].bias is None
    assert isinstance(b.layer1[0].shortcut, nn.Identity)
    # 6n+2 with n = 3 → three blocks per stage; stride 2 on conv1 of the first block of stages 2 and 3.
    assert [len(s) for s in (a.layer1, a.layer2, a.layer3)] == [3, 3, 3]
    assert [a.layer1[0].conv1.stride, a.layer2[0].conv1.stride, a.layer3[0].conv1.stride] == [
        (1, 1),
        (2, 2),
        (2, 2),
    ]


def test_cifar_resnet_block_is_relu_of_branch_plus_padded_input() -> None:
    block = create("resnet20").layer2[0].eval()
    x = torch.randn(2, 16, 8, 8)
    branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    expected = F.relu(branch + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    torch.testing.assert_close(block(x), expected)


def test_vgg16_module_indices_match_hrank_relucfg() -> None:
    features = create("vgg16_bn").features
    assert len(features) == 13 * 3 + 4
    assert [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)] == [
        2,
        5,
        9,
        12,
        16,
        19,
        22,
        26,
        29,
        32,
        36,
        39,
        42,
    ]
    assert [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)] == [6, 13, 23, 33]
    assert all(m.bias is not None for m in features if isinstance(m, nn.Conv2d))
    assert list(dict(create("vgg16_bn").classifier.named_children())) == [
        "linear1",
        "norm1",
        "relu1",
        "linear2",
    ]


def test_vgg19_c_conv_indices_match_tpp() -> None:
    model = create("vgg19_bn")
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    assert convs == [0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49]
    assert not isinstance(model.features[-1], nn.MaxPool2d)  # no trailing pool
    assert all(model.features[i].bias is None for i in convs)
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 100)


def test_densenet40_widths() -> None:
    model = create("densenet40")
    # 24 + 12·12 = 168, 168 + 144 = 312, 312 + 144 = 456; compression 1 keeps widths at transitions.
    assert (model.trans1.conv1.in_channels, model.trans1.conv1.out_channels) == (168, 168)
    assert (model.trans2.conv1.in_channels, model.trans2.conv1.out_channels) == (312, 312)
    assert model.fc.in_features == 456
    assert [len(model.dense1), len(model.dense2), len(model.dense3)] == [12, 12, 12]
    assert model.dense3[11].conv1.in_channels == 444


def test_googlenet_layout() -> None:
    model = create("googlenet")
    assert model.maxpool1 is not model.maxpool2
    a3 = model.a3
    # a3 = (192, 64, 96, 128, 16, 32, 32): the "5×5" branch is 1×1 → 3×3 → 3×3.
    kernels = [m.kernel_size for m in a3.branch5x5 if isinstance(m, nn.Conv2d)]
    assert kernels == [(1, 1), (3, 3), (3, 3)]
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert a3(torch.zeros(1, 192, 4, 4)).shape == (1, 64 + 128 + 32 + 32, 4, 4)


def test_imagenet_resnets_have_torchvision_state_dict_layout() -> None:
    r50 = create("resnet50")
    sd = r50.state_dict()
    # 53 convs (stem + 16 bottlenecks × 3 + 4 downsamples), 53 BNs (weight, bias, 3 buffers), fc w/b.
    assert len(sd) == 53 + 53 * 5 + 2
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["fc.weight"].shape == (1000, 2048)
    # v1.5: the stride sits on the 3×3 conv2, not on the 1×1 conv1.
    assert (r50.layer2[0].conv1.stride, r50.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    r18 = create("resnet18")
    assert r18.layer1[0].downsample is None and r18.layer2[0].downsample is not None
    assert len(r18.state_dict()) == 20 + 20 * 5 + 2  # 20 convs: stem + 8 blocks × 2 + 3 downsamples


def test_zero_init_residual_zeroes_the_last_bn_of_each_block() -> None:
    r18 = create("resnet18", zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for s in (r18.layer1, r18.layer4) for b in s)
    assert torch.all(r18.layer1[0].bn1.weight == 1)
    r50 = create("resnet50", zero_init_residual=True)
    assert torch.all(r50.layer3[5].bn3.weight == 0) and torch.all(r50.layer3[5].bn2.weight == 1)


def test_lenets_layout() -> None:
    mlp = create("lenet300_100")
    assert [(m.in_features, m.out_features) for m in (mlp.fc1, mlp.fc2, mlp.fc3)] == [
        (784, 300),
        (300, 100),
        (100, 10),
    ]
    assert create("lenet300_100", input_size=[32, 32]).fc1.in_features == 1024  # TPP's 32×32 MNIST
    lenet = create("lenet5")
    assert (lenet.conv1.out_channels, lenet.conv2.out_channels, lenet.fc1.in_features) == (20, 50, 800)
