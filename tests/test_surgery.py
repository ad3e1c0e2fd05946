"""Channel surgery on the zoo: exact widths and MACs, exactness against masking, refused plans."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import SurgeryError
from prunekit.measure.cost import cost
from prunekit.models import create
from prunekit.models.layers import ZeroPadShortcut
from prunekit.surgery import apply, apply_with_report, coupling_groups, prunable_layers
from prunekit.surgery.graph import ZeroPadShortcutPruner


def uniform_plan(model: nn.Module, groups: list[tuple[str, ...]], ratio: float) -> dict[str, list[int]]:
    """One random kept set per coupling group (on its first layer), `ratio` of the channels removed."""
    plan = {}
    for group in groups:
        full = width(model, group[0])
        keep = max(1, round(full * (1 - ratio)))
        plan[group[0]] = sorted(torch.randperm(full)[:keep].tolist())
    return plan


def width(model: nn.Module, name: str) -> int:
    module = dict(model.named_modules())[name]
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


# --- the ZeroPadShortcut pruner -------------------------------------------------------------------


def test_zero_pad_pruner_drops_output_pairs_and_renumbers_dst() -> None:
    sc = ZeroPadShortcut(4, 8)  # src 0..3 land at dst 2..5
    ZeroPadShortcutPruner().prune_out_channels(sc, [3, 6])
    assert sc.src.tolist() == [0, 2, 3]
    assert sc.dst.tolist() == [2, 3, 4]  # dst 4, 5 shift down past removed output 3
    assert (sc.in_channels, sc.out_channels) == (4, 6)


def test_zero_pad_pruner_drops_input_pairs_and_renumbers_src() -> None:
    sc = ZeroPadShortcut(4, 8)
    ZeroPadShortcutPruner().prune_in_channels(sc, [0, 2])
    assert sc.src.tolist() == [0, 1]  # inputs 1 and 3 renumbered
    assert sc.dst.tolist() == [3, 5]
    assert (sc.in_channels, sc.out_channels) == (2, 8)


def test_zero_pad_pruning_equals_masking() -> None:
    sc = ZeroPadShortcut(4, 8, stride=2)
    x = torch.randn(2, 4, 6, 6)
    full = sc(x)
    pruner = ZeroPadShortcutPruner()
    pruner.prune_in_channels(sc, [1])
    pruner.prune_out_channels(sc, [0, 4])
    masked = full.clone()
    masked[:, 3] = 0  # input 1 landed at output 3
    keep_out = [c for c in range(8) if c not in (0, 4)]
    torch.testing.assert_close(sc(x[:, [0, 2, 3]]), masked[:, keep_out], rtol=0, atol=0)


# --- plans, widths and MACs on a hand-sized net ------------------------------------------------------


def test_apply_tiny_net_exact_widths_macs_and_report() -> None:
    model = TinyNet()
    model.prunekit_arch = {"name": "tiny", "kwargs": {}}
    model.train()
    x = torch.randn(2, 3, 4, 4)
    pruned, report = apply_with_report(model, {"conv1": [1, 5]}, x)

    assert pruned.conv1.weight.shape == (2, 3, 3, 3)
    assert pruned.bn1.num_features == 2 and pruned.conv2.weight.shape == (4, 2, 3, 3)
    torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[[1, 5]])
    torch.testing.assert_close(pruned.conv2.weight, model.conv2.weight[:, [1, 5]])
    # conv+linear MACs per image at 4x4: 3*8*9*16 + 8*4*9*16 + 4*10 -> 3*2*9*16 + 2*4*9*16 + 4*10
    assert (report.macs_before, report.macs_after) == (8104, 2056)
    assert (report.params_before, report.params_after) == (
        3 * 8 * 9 + 8 * 4 * 9 + 50,
        3 * 2 * 9 + 2 * 4 * 9 + 50,
    )
    assert report.changed == {"conv1": (8, 2)}
    assert report.planned == ("conv1",) and report.coupled == ()
    # the input model is untouched; the copy keeps its arch record and training flags
    assert model.conv1.out_channels == 8 and model.bn1.num_features == 8
    assert pruned.prunekit_arch == {"name": "tiny", "kwargs": {}}
    assert pruned.training and pruned.bn1.training


def test_apply_accepts_tensor_and_bool_mask_and_unsorted_indices() -> None:
    model, x = TinyNet(), torch.randn(1, 3, 4, 4)
    by_tensor = apply(model, {"conv1": torch.tensor([5, 1])}, x)
    by_mask = apply(model, {"conv1": torch.tensor([False, True, False, False, False, True, False, False])}, x)
    for pruned in (by_tensor, by_mask):
        torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[[1, 5]])


def test_keep_everything_is_a_no_op() -> None:
    model, x = TinyNet(), torch.randn(1, 3, 4, 4)
    pruned, report = apply_with_report(model, {"conv2": [0, 1, 2, 3]}, x)
    assert report.changed == {} and report.macs_after == report.macs_before == 8104


# --- refused plans --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"conv3": [0]}, r"no Conv2d or Linear layer named 'conv3'.*did you mean 'conv2', 'conv1'\?"),
        ({"bn1": [0]}, r"'bn1' is a BatchNorm2d; a channel plan names Conv2d or Linear"),
        (
            {"conv1": []},
            r"removing every channel of 'conv1' leaves the model's output independent of its input",
        ),
        ({"conv1": [0, 8, -1]}, r"'conv1' has 8 output channels \(0\.\.7\); plan keeps \[-1, 8\]"),
        ({"conv1": [2, 3, 2]}, r"'conv1': plan lists channels \[2\] more than once"),
        ({"conv1": torch.tensor([0.0, 1.0])}, r"1-D integer tensor"),
        ({"conv1": torch.ones(3, dtype=torch.bool)}, r"boolean keep-mask must have shape \(8,\)"),
        ({"fc": [0, 1]}, r"cannot prune layer 'fc'.*the model's outputs \(the classifier\)"),
    ],
)
def test_bad_plans_are_refused_before_touching_anything(plan: dict, message: str) -> None:
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SurgeryError, match=message):
        apply(model, plan, torch.randn(1, 3, 4, 4))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_conflicting_plans_in_one_residual_group_name_both_layers() -> None:
    model, x = create("resnet20"), torch.randn(1, 3, 8, 8)
    plan = {"layer1.0.conv2": list(range(8)), "layer1.2.conv2": list(range(1, 9))}
    with pytest.raises(SurgeryError, match=r"'layer1.2.conv2' and 'layer1.0.conv2' are coupled"):
        apply(model, plan, x)


def test_agreeing_plans_in_one_group_and_followers() -> None:
    model, x = create("resnet20"), torch.randn(1, 3, 8, 8)
    keep = [0, 2, 4, 6, 8, 10]
    pruned, report = apply_with_report(model, {"conv1": keep, "layer1.1.conv2": keep}, x)
    stage1 = ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert {name: width(pruned, name) for name in stage1} == dict.fromkeys(stage1, 6)
    assert report.coupled == ("layer1.0.conv2", "layer1.2.conv2")
    assert pruned.layer2[0].shortcut.in_channels == 6 and pruned.layer2[0].shortcut.out_channels == 32
    assert width(pruned, "layer1.0.conv1") == 16  # not coupled: untouched


# --- groups ---------------------------------------------------------------------------------------------


def test_prunable_layers_resnet20_option_a() -> None:
    model = create("resnet20")
    model.train()
    layers = prunable_layers(model, torch.randn(1, 3, 8, 8))
    assert model.training and model.layer1[0].bn1.training  # tracing put it in eval; restored
    assert [layer.name for layer in layers][:4] == [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.1.conv1",
    ]
    assert len(layers) == 19 and "fc" not in {layer.name for layer in layers}
    by_name = {layer.name: layer for layer in layers}
    assert by_name["layer1.1.conv2"].group == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    # ZeroPadShortcut keeps each stage its own group
    assert by_name["layer2.0.conv2"].group == ("layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2")
    assert by_name["layer2.0.conv1"].group == ("layer2.0.conv1",)
    assert (by_name["layer3.2.conv2"].out_channels, by_name["layer3.2.conv2"].module_type) == (64, nn.Conv2d)
    assert len(coupling_groups(model, torch.randn(1, 3, 8, 8))) == 9 + 3


def test_option_b_shortcut_conv_joins_its_stage_group() -> None:
    groups = coupling_groups(create("resnet20", shortcut="B"), torch.randn(1, 3, 8, 8))
    assert ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2") in groups


# --- exactness: pruning zeroed channels equals the masked full model ------------------------------------


def randomize_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 0.3 + 0.2)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def zero_channel(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channel: int) -> None:
    with torch.no_grad():
        conv.weight[channel] = 0
        if conv.bias is not None:
            conv.bias[channel] = 0
        if bn is not None:
            bn.weight[channel] = 0
            bn.bias[channel] = 0


def all_but(n: int, *dropped: int) -> list[int]:
    return [c for c in range(n) if c not in dropped]


def assert_pruning_equals_masking(model: nn.Module, plan: dict, x: torch.Tensor) -> nn.Module:
    model.eval()
    pruned = apply(model, plan, x)
    with torch.no_grad():
        expected, got = model(x), pruned(x)
    assert got.shape == expected.shape
    # Deep nets with random weights reach any scale; compare at the output's own scale.
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(got / scale, expected / scale, rtol=1e-5, atol=1e-5)
    return pruned


def test_exact_resnet56_a_internal_channel() -> None:
    model = create("resnet56")
    randomize_bn(model)
    block = model.layer2[3]
    zero_channel(block.conv1, block.bn1, 7)
    pruned = assert_pruning_equals_masking(model, {"layer2.3.conv1": all_but(32, 7)}, torch.randn(2, 3, 8, 8))
    assert pruned.layer2[3].conv2.in_channels == 31


def test_exact_resnet56_a_stage_channels_through_zero_pad_shortcut() -> None:
    model = create("resnet56")
    randomize_bn(model)
    # stage-1 channel 3 is zero everywhere: stem and every residual branch of stage 1
    zero_channel(model.conv1, model.bn1, 3)
    for block in model.layer1:
        zero_channel(block.conv2, block.bn2, 3)
    # stage-2 channels 0 (pure zero padding) and 11 (= stage-1 channel 3 through the shortcut)
    for block in model.layer2:
        for c in (0, 11):
            zero_channel(block.conv2, block.bn2, c)
    plan = {"conv1": all_but(16, 3), "layer2.4.conv2": all_but(32, 0, 11)}
    pruned = assert_pruning_equals_masking(model, plan, torch.randn(2, 3, 8, 8))
    shortcut = pruned.layer2[0].shortcut
    assert (shortcut.in_channels, shortcut.out_channels) == (15, 30)
    assert shortcut.src.tolist() == list(range(15))
    assert shortcut.dst.tolist() == list(range(7, 10)) + list(range(10, 22))  # 8..23 minus 11, shifted by 1
    assert pruned.layer3[0].shortcut.in_channels == 30 and pruned.layer3[0].conv1.in_channels == 30


def test_exact_vgg16() -> None:
    model = create("vgg16_bn")
    randomize_bn(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    modules = dict(model.named_modules())
    name = convs[4]
    bn_name = name.rsplit(".", 1)[0] + "." + str(int(name.rsplit(".", 1)[1]) + 1)
    zero_channel(modules[name], modules[bn_name], 100)
    assert_pruning_equals_masking(model, {name: all_but(256, 100)}, torch.randn(2, 3, 16, 16))


def test_exact_densenet40_concat() -> None:
    model = create("densenet40")
    randomize_bn(model)
    layer = model.dense2[3]
    zero_channel(layer.conv1, None, 5)
    # pre-activation: every later BN reading the concatenated channel must see it as zero contribution
    position = layer.conv1.in_channels + 5
    with torch.no_grad():
        for later in [*model.dense2[4:], model.trans2]:
            later.bn1.weight[position] = 0
            later.bn1.bias[position] = 0
    pruned = assert_pruning_equals_masking(model, {"dense2.3.conv1": all_but(12, 5)}, torch.randn(2, 3, 8, 8))
    assert pruned.trans2.conv1.in_channels == 311 and pruned.dense2[11].bn1.num_features == 299


def test_exact_googlenet_concat_branches() -> None:
    model = create("googlenet")
    randomize_bn(model)
    zero_channel(model.a3.branch3x3[3], model.a3.branch3x3[4], 17)
    zero_channel(model.a4.branch_pool[1], model.a4.branch_pool[2], 0)
    plan = {"a3.branch3x3.3": all_but(128, 17), "a4.branch_pool.1": all_but(64, 0)}
    pruned = assert_pruning_equals_masking(model, plan, torch.randn(2, 3, 8, 8))
    assert pruned.b3.branch1x1[0].in_channels == 255 and pruned.b4.branch5x5[0].in_channels == 511


# --- the whole zoo ----------------------------------------------------------------------------------------

ZOO = [
    ("resnet20", {}, (3, 8, 8), (0.3, 0.9)),
    ("resnet20", {"shortcut": "B"}, (3, 8, 8), (0.5, 0.9)),
    ("resnet56", {}, (3, 8, 8), (0.5, 0.9)),
    ("resnet56", {"shortcut": "B"}, (3, 8, 8), (0.9,)),
    ("resnet110", {}, (3, 8, 8), (0.5,)),
    ("vgg16_bn", {}, (3, 16, 16), (0.3, 0.9)),
    ("vgg19_bn", {}, (3, 16, 16), (0.9,)),
    ("densenet40", {}, (3, 8, 8), (0.5, 0.9)),
    ("googlenet", {}, (3, 8, 8), (0.5, 0.9)),
    ("lenet5", {}, (1, 28, 28), (0.5, 0.9)),
    ("lenet300_100", {}, (1, 28, 28), (0.5, 0.9)),
    ("resnet18", {}, (3, 64, 64), (0.5, 0.9)),
    ("resnet50", {}, (3, 64, 64), (0.9,)),
]


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape", "ratio"),
    [
        pytest.param(a, kw, s, r, id=f"{a}{'-B' if kw else ''}-{r}")
        for a, kw, s, ratios in ZOO
        for r in ratios
    ],
)
def test_zoo_uniform_ratio(arch: str, kwargs: dict, shape: tuple[int, ...], ratio: float) -> None:
    model = create(arch, **kwargs)
    x = torch.randn(2, *shape)
    groups = coupling_groups(model, x)
    plan = uniform_plan(model, groups, ratio)
    members = {group[0]: group for group in groups}
    pruned, report = apply_with_report(model, plan, x)

    with torch.no_grad():
        assert pruned.eval()(x).shape == model.eval()(x).shape
    for root, kept in plan.items():
        for member in members[root]:  # the whole coupled group follows its planned layer
            assert width(pruned, member) == len(kept), member
    full = cost(model, shape)
    small = cost(pruned, shape)
    assert (report.macs_before, report.macs_after) == (full.macs, small.macs)
    assert small.macs < full.macs
    assert pruned.prunekit_arch == model.prunekit_arch
