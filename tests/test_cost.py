"""Params/MACs counter and the papers' conventions, against counts derived by hand from each architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import (
    CONVENTION,
    cost,
    counter,
    flops_2x,
    hrank_flops,
    hrank_params,
    thop_flops,
    thop_params,
)
from prunekit.models import create


def conv_macs(c_in: int, c_out: int, k: int, hw: int) -> int:
    return c_in * c_out * k * k * hw


def cifar_resnet_counts(n: int) -> tuple[int, int]:
    """(conv+linear MACs, conv+linear params) of an option-A CIFAR ResNet-(6n+2) at 32×32."""
    macs = conv_macs(3, 16, 3, 32 * 32) + 2 * n * conv_macs(16, 16, 3, 32 * 32)
    params = 3 * 16 * 9 + 2 * n * 16 * 16 * 9
    for c_in, c, hw in [(16, 32, 16 * 16), (32, 64, 8 * 8)]:
        # The first conv of the stage narrows from c_in and strides; the other 2n-1 are c → c.
        macs += conv_macs(c_in, c, 3, hw) + (2 * n - 1) * conv_macs(c, c, 3, hw)
        params += c_in * c * 9 + (2 * n - 1) * c * c * 9
    return macs + 64 * 10, params + 64 * 10 + 10


def test_resnet56_option_a_matches_hrank_and_tpp() -> None:
    c = cost(create("resnet56"), (3, 32, 32))
    # stem 442,368 + stage1 18·2,359,296 + stages 2 and 3 each 1,179,648 + 17·2,359,296 + fc 640
    assert c.macs == 125_485_696 == cifar_resnet_counts(9)[0]
    assert c.params == 848_954 == cifar_resnet_counts(9)[1]
    assert c.bn_params == 2 * (16 + 18 * 16 + 18 * 32 + 18 * 64) == 4_064
    assert c.total_params == c.params + c.bn_params
    assert f"{c.macs / 1e6:.2f}M {c.params / 1e6:.2f}M" == "125.49M 0.85M"


def test_resnet110_option_a() -> None:
    c = cost(create("resnet110"), (3, 32, 32))
    assert (c.macs, c.params) == (252_887_680, 1_719_866) == cifar_resnet_counts(18)
    assert f"{c.macs / 1e6:.2f}M {c.params / 1e6:.2f}M" == "252.89M 1.72M"


def test_resnet20_option_b_matches_trp_and_differs_from_a_by_the_projections() -> None:
    a = cost(create("resnet20"), (3, 32, 32))
    b = cost(create("resnet20", shortcut="B"), (3, 32, 32))
    # Projections: 1×1 16→32 at 16×16 and 32→64 at 8×8 = 131,072 MACs each; 512 + 2,048 weights.
    assert b.macs - a.macs == 2 * 131_072
    assert b.params - a.params == 16 * 32 + 32 * 64
    assert b.bn_params - a.bn_params == 2 * (32 + 64)
    # TRP's counter takes conv MACs only: 40,812,544 ("40.81M"); its "0.272M" params include BN.
    assert b.macs - 640 == 40_812_544 == cifar_resnet_counts(3)[0] - 640 + 2 * 131_072
    assert b.total_params == 272_474 and f"{b.total_params / 1e6:.3f}" == "0.272"
    extra = {r.name for r in b.layers} - {r.name for r in a.layers}
    assert extra == {f"layer{s}.0.shortcut.{i}" for s in (2, 3) for i in (0, 1)}


# VGG-16 conv MACs per resolution: 32² (3→64, 64→64), 16² (64→128, 128→128), 8² (128→256, 2× 256→256),
# 4² (256→512, 2× 512→512), 2² (3× 512→512).
VGG16_CONV_MACS = (
    conv_macs(3, 64, 3, 1024)
    + conv_macs(64, 64, 3, 1024)
    + conv_macs(64, 128, 3, 256)
    + conv_macs(128, 128, 3, 256)
    + conv_macs(128, 256, 3, 64)
    + 2 * conv_macs(256, 256, 3, 64)
    + conv_macs(256, 512, 3, 16)
    + 2 * conv_macs(512, 512, 3, 16)
    + 3 * conv_macs(512, 512, 3, 4)
)


def test_vgg16_counts_and_hrank_double_classifier_quirk() -> None:
    model = create("vgg16_bn")
    c = cost(model, (3, 32, 32))
    assert VGG16_CONV_MACS == 313_196_544
    assert sum(r.macs for r in c.layers if r.type == "Conv2d") == 313_196_544
    assert sum(r.macs for r in c.layers if r.type == "Linear") == 512 * 512 + 512 * 10 == 267_264
    # conv weights 14,710,464 + conv biases 4,224 + linear 262,656 + 5,130
    assert c.params == 14_982_474 and f"{c.params / 1e6:.2f}" == "14.98"
    assert hrank_params(model) == c.params
    flops = hrank_flops(model)
    assert flops == 313_196_544 + 2 * 267_786 == 313_732_116
    assert f"{flops / 1e6:.2f}" == "313.73"


def test_vgg19_c100_counts() -> None:
    model = create("vgg19_bn")
    c = cost(model, (3, 32, 32))
    conv = (
        conv_macs(3, 64, 3, 1024)
        + conv_macs(64, 64, 3, 1024)
        + conv_macs(64, 128, 3, 256)
        + conv_macs(128, 128, 3, 256)
        + conv_macs(128, 256, 3, 64)
        + 3 * conv_macs(256, 256, 3, 64)
        + conv_macs(256, 512, 3, 16)
        + 3 * conv_macs(512, 512, 3, 16)
        + 4 * conv_macs(512, 512, 3, 4)
    )
    assert c.macs == conv + 512 * 100 == 398_182_400
    flops = flops_2x(model)
    assert flops == 2 * c.macs == 796_364_800 and f"{flops / 1e9:.2f}" == "0.80"
    assert (c.params, c.total_params) == (20_070_180, 20_081_188)  # TPP: 20.07M conv/FC, 20.08M with BN


def test_densenet40_hrank_convention() -> None:
    model = create("densenet40")
    # Dense layer with c inputs: 12·c·9 MACs per pixel; a block's inputs are c0, c0+12, ..., c0+132.
    dense = sum(
        12 * 9 * hw * sum(c0 + 12 * i for i in range(12)) for c0, hw in [(24, 1024), (168, 256), (312, 64)]
    )
    # Transitions convolve before their 2×2 pool: 168→168 at 32², 312→312 at 16².
    conv = conv_macs(3, 24, 3, 1024) + dense + conv_macs(168, 168, 1, 1024) + conv_macs(312, 312, 1, 256)
    assert conv == 282_912_768
    flops, params = hrank_flops(model), hrank_params(model)
    assert flops == conv + 456 * 10 + 10 == 282_917_338
    assert params == 1_040_578
    assert (f"{flops / 1e6:.2f}", f"{params / 1e6:.2f}") == ("282.92", "1.04")


GOOGLENET_INCEPTIONS = [  # (in, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes, H·W)
    (192, 64, 96, 128, 16, 32, 32, 1024),
    (256, 128, 128, 192, 32, 96, 64, 1024),
    (480, 192, 96, 208, 16, 48, 64, 256),
    (512, 160, 112, 224, 24, 64, 64, 256),
    (512, 128, 128, 256, 24, 64, 64, 256),
    (512, 112, 144, 288, 32, 64, 64, 256),
    (528, 256, 160, 320, 32, 128, 128, 256),
    (832, 256, 160, 320, 32, 128, 128, 64),
    (832, 384, 192, 384, 48, 128, 128, 64),
]


def test_googlenet_hrank_convention() -> None:
    model = create("googlenet")
    macs, params = conv_macs(3, 192, 3, 1024), 3 * 192 * 9 + 192
    for c, n1, r3, n3, r5, n5, pp, hw in GOOGLENET_INCEPTIONS:
        weights = c * n1 + c * r3 + 9 * r3 * n3 + c * r5 + 9 * r5 * n5 + 9 * n5 * n5 + c * pp
        macs += weights * hw
        params += weights + n1 + r3 + n3 + r5 + n5 + n5 + pp  # every conv has a bias
    flops = hrank_flops(model)
    assert flops == macs + 1024 * 10 + 10 == 1_521_756_170
    assert hrank_params(model) == params + 1024 * 10 + 10 == 6_150_442
    assert (f"{flops / 1e9:.2f}", f"{hrank_params(model) / 1e6:.2f}") == ("1.52", "6.15")


def test_resnet50_hrank_and_thop_conventions() -> None:
    model = create("resnet50")
    c = cost(model, (3, 224, 224))
    assert (c.macs, c.params, c.total_params) == (4_089_184_256, 25_503_912, 25_557_032)
    assert f"{c.macs / 1e9:.2f}" == "4.09"  # torchvision's documented GFLOPS (MAC convention)
    hrank, thop = hrank_flops(model), thop_flops(model)
    assert hrank == c.macs + 1000 == 4_089_185_256  # the fc counted as weight + bias numel
    assert (f"{hrank / 1e9:.3f}", f"{hrank_params(model) / 1e6:.2f}") == ("4.089", "25.50")
    # thop adds 2 ops per BN element (11,113,984 elements) and (49 + 1) per output of the 7×7 avg pool.
    bn_elements = sum(
        r.output_shape[0] * r.output_shape[1] * r.output_shape[2] for r in c.layers if r.bn_params
    )
    assert bn_elements == 11_113_984
    assert thop == c.macs + 2 * bn_elements + 50 * 2048 == 4_111_514_624
    assert f"{thop / 1e9:.2f}" == "4.11"
    assert thop_params(model) == 25_557_032  # HRankPlus prints 25.55M: truncated, not rounded


@pytest.mark.parametrize(
    ("name", "macs", "params", "thop_g"),
    [("resnet18", 1_814_073_344, 11_689_512, "1.82"), ("resnet34", 3_663_761_408, 21_797_672, "3.67")],
)
def test_imagenet_basic_resnets(name: str, macs: int, params: int, thop_g: str) -> None:
    model = create(name)
    c = cost(model, (3, 224, 224))
    # torchvision documents 1.81 / 3.66 GFLOPS (MACs) and 11,689,512 / 21,797,672 params (BN included).
    assert (c.macs, c.total_params) == (macs, params)
    assert f"{thop_flops(model) / 1e9:.2f}" == thop_g


def test_lenets() -> None:
    mlp = cost(create("lenet300_100"), (1, 28, 28))
    assert mlp.params == (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10) == 266_610
    assert mlp.macs == 266_200 and mlp.bn_params == 0
    lenet = cost(create("lenet5"), (1, 28, 28))
    assert lenet.params == 520 + 25_050 + 400_500 + 5_010 == 431_080
    by_layer = {r.name: r.macs for r in lenet.layers if r.macs}
    # conv1: 20·1·25 per output pixel × 24²; conv2: 50·20·25 × 8²; fc1 800·500; fc2 500·10
    assert by_layer == {"conv1": 288_000, "conv2": 1_600_000, "fc1": 400_000, "fc2": 5_000}


def test_grouped_and_transposed_convs() -> None:
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert cost(depthwise, (8, 10, 10)).macs == 8 * 9 * 100  # one 3×3 filter per channel
    up = nn.ConvTranspose2d(4, 6, 2, stride=2)
    # each of the 4·5·5 input elements is scattered into 6·2·2 outputs
    assert cost(up, (4, 5, 5)).macs == 100 * 24
    assert cost(up, (4, 5, 5)).params == 4 * 6 * 4 + 6
    assert [r.name for r in cost(up, (4, 5, 5)).layers] == ["(model)"]


class LowRankConv(nn.Module):
    """Reports its own cost: the counter must not also count its two children."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(4, 2, 3, padding=1, bias=False)
        self.second = nn.Conv2d(2, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def prunekit_cost(self, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
        return 1_000, 7 * out.shape[2] * out.shape[3]


def test_module_with_its_own_report_is_counted_by_it() -> None:
    model = nn.Sequential(LowRankConv(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    c = cost(model, (4, 6, 6))
    assert [r.name for r in c.layers] == ["0", "1", "2"]
    assert c.layers[0].type == "LowRankConv"
    assert c.macs == 7 * 36 + 288 * 3
    assert c.params == 1_000 + 288 * 3 + 3
    assert c.total_params == (4 * 2 * 9) + (2 * 8 + 8) + (288 * 3 + 3)


class TwiceLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(self.bn(self.fc(self.bn(x))))


def test_module_called_twice_counts_macs_twice_and_params_once() -> None:
    c = cost(TwiceLinear(), (5, 1, 1))
    assert c.macs == 2 * 25
    assert (c.params, c.bn_params) == (30, 10)
    assert [(r.name, r.params, r.macs) for r in c.layers if r.type == "Linear"] == [
        ("fc", 30, 25),
        ("fc", 0, 25),
    ]


def test_parameter_shared_by_two_modules_is_counted_once() -> None:
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    c = cost(nn.Sequential(nn.Flatten(), a, b), (4, 1, 1))
    assert (c.params, c.macs, c.total_params) == (16, 32, 16)


def test_batch_dimension_is_per_image_and_training_flags_are_restored() -> None:
    model = create("resnet20").train()
    model.layer2.eval()
    c1, c4 = cost(model, (3, 32, 32)), cost(model, (4, 3, 32, 32))
    assert (c1.macs, c1.params) == (c4.macs, c4.params)
    assert c4.layers[0].input_shape == (3, 32, 32) and c4.input_shape == (3, 32, 32)
    assert model.training and model.layer1.training and not model.layer2.training
    assert not model.layer2[0].bn1.training and model.layer3[0].bn1.training


def test_bad_input_shape() -> None:
    with pytest.raises(
        ConfigError, match=r"input_shape must be \(C, H, W\) or \(N, C, H, W\).*got \(3, 32\)"
    ):
        cost(create("lenet5"), (3, 32))


def test_report_states_the_convention() -> None:
    c = cost(create("lenet5"), (1, 28, 28))
    assert str(c) == f"431,080 params, 2,293,000 MACs, 0 BN params at input 1x28x28 ({CONVENTION})"
    assert CONVENTION.startswith("MACs = conv + linear multiply-accumulates per image")
    lines = c.table().splitlines()
    assert lines[0].split() == ["layer", "type", "input", "output", "params", "MACs", "MAC", "%"]
    assert lines[2].split() == ["conv1", "Conv2d", "1x28x28", "20x24x24", "520", "288,000", "12.56"]
    assert lines[-2].split()[:2] == ["total", "431,080"] and lines[-1] == CONVENTION
    assert len(c.table(all_layers=True).splitlines()) == len(c.layers) + 5
    assert c.as_dict() == {
        "params": 431_080,
        "macs": 2_293_000,
        "bn_params": 0,
        "total_params": 431_080,
        "input_shape": [1, 28, 28],
        "convention": CONVENTION,
    }


def test_counter_lookup_and_default_input_shape() -> None:
    assert counter("hrank").flops(create("resnet56")) == 125_485_706  # HRank: conv MACs + fc w+b (650)
    assert counter("flops_2x").flops(create("resnet56")) == 2 * 125_485_696
    with pytest.raises(ConfigError, match=r"unknown counter 'fvcore'; valid counters: flops_2x, hrank, thop"):
        counter("fvcore")
    with pytest.raises(ConfigError, match="input_shape is needed"):
        hrank_flops(nn.Linear(3, 3))
