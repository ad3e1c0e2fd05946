"""Channel surgery on models a user writes: each ends as a correct smaller model or a clear SurgeryError."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit.surgery.graph as surgery_graph
from prunekit.errors import SurgeryError
from prunekit.measure.cost import cost
from prunekit.surgery import apply, apply_with_report, coupling_groups, prunable_layers


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def width(model: nn.Module, name: str) -> int:
    module = dict(model.named_modules())[name]
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def half_plan(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """Every other channel of each coupling group's first layer."""
    return {group[0]: list(range(0, width(model, group[0]), 2)) for group in coupling_groups(model, x)}


def assert_smaller_and_running(model: nn.Module, plan: dict, x: torch.Tensor) -> nn.Module:
    model.eval()
    pruned, report = apply_with_report(model, plan, x)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    for name, kept in plan.items():
        assert width(pruned, name) == len(kept)
    assert report.macs_after < report.macs_before
    assert cost(pruned, tuple(x.shape)).macs == report.macs_after
    return pruned


# --- torchvision-style ResNet-50: bottlenecks with a downsample projection -----------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(*conv_bn(inplanes, planes * 4, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    def __init__(self, base: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, base, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = base, []
        for i, blocks in enumerate((3, 4, 6, 3)):
            planes = base * 2**i
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, 2 if b == 0 and i > 0 else 1))
                inplanes = planes * 4
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_torchvision_style_resnet50() -> None:
    model, x = ResNet50(), torch.randn(2, 3, 32, 32)
    groups = coupling_groups(model, x)
    assert (
        "layer2.0.conv3",
        "layer2.0.downsample.0",
        "layer2.1.conv3",
        "layer2.2.conv3",
        "layer2.3.conv3",
    ) in [tuple(sorted(g)) for g in groups]
    assert len(groups) == 4 + 16 * 2 + 1  # stage groups, conv1+conv2 of every block, the stem
    pruned = assert_smaller_and_running(model, half_plan(model, x), x)
    assert pruned.layer3[5].conv3.out_channels == pruned.layer3[0].downsample[0].out_channels == 64
    assert pruned.fc.in_features == 128


# --- MobileNetV2-style: depthwise convs and inverted residuals --------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            *conv_bn(inp, hidden, 1),
            nn.ReLU6(inplace=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(inplace=True),
            *conv_bn(hidden, oup, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, 2), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 4),
            InvertedResidual(8, 16, 2, 6),
            InvertedResidual(16, 16, 1, 6),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_mobilenet_v2_style_depthwise_and_inverted_residuals() -> None:
    model, x = MobileNetV2ish(), torch.randn(2, 3, 16, 16)
    groups = coupling_groups(model, x)
    assert ("blocks.1.conv.0", "blocks.1.conv.3") in groups  # expansion conv drags its depthwise conv
    assert ("stem.0", "blocks.0.conv.6") in groups  # the residual add
    pruned = assert_smaller_and_running(model, half_plan(model, x), x)
    dw = pruned.blocks[1].conv[3]
    assert dw.in_channels == dw.out_channels == dw.groups == 24


# --- torch.cat branches, including a concatenation added to a wide conv -----------------------------------


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1)
        self.d = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))
        return self.fc(torch.flatten(torch.relu(self.d(y)), 1))


def test_cat_branches_follow_the_wide_layer_and_stay_exact() -> None:
    model, x = CatNet().eval(), torch.randn(2, 3, 4, 4)
    assert coupling_groups(model, x) == [("a", "b", "c"), ("d",)]
    with torch.no_grad():  # channels 2 (a's 2) and 5 (b's 1) contribute nothing: zero them everywhere
        for conv, c in ((model.a, 2), (model.b, 1), (model.c, 2), (model.c, 5)):
            conv.weight[c] = 0
            conv.bias[c] = 0
    pruned = apply(model, {"c": [0, 1, 3, 4, 6, 7], "d": [0, 2, 3, 5]}, x)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.d.in_channels) == (3, 3, 6)
    torch.testing.assert_close(pruned.b.weight, model.b.weight[[0, 2, 3]])
    assert pruned.fc.in_features == 4 * 16
    keep_fc = [c * 16 + p for c in (0, 2, 3, 5) for p in range(16)]
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, keep_fc])


def test_cat_partner_planned_inconsistently_is_refused() -> None:
    model, x = CatNet(), torch.randn(1, 3, 4, 4)
    message = (
        r"layers 'c' and 'a' are coupled.*channels of 'a' remove \[3\] from 'c'.*for 'c' removes \[2, 5\]"
    )
    with pytest.raises(SurgeryError, match=message):
        apply(model, {"c": [0, 1, 3, 4, 6, 7], "a": [0, 1, 2]}, x)


# --- grouped convolutions ------------------------------------------------------------------------------


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = conv_bn(3, 8)
        self.gconv, self.bn1 = conv_bn(8, 8, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.conv0(x)))
        return self.fc(torch.relu(self.bn1(self.gconv(x))).mean((2, 3)))


def test_grouped_conv_pruned_alike_in_every_group_is_exact() -> None:
    model, x = GroupedNet().eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        for c in (1, 5):  # position 1 of both groups
            model.bn0.weight[c] = 0
            model.bn0.bias[c] = 0
    pruned = apply(model, {"conv0": [0, 2, 3, 4, 6, 7], "gconv": [0, 1, 2, 4, 5, 6]}, x)
    assert pruned.gconv.weight.shape == (6, 3, 3, 3) and pruned.gconv.groups == 2
    with torch.no_grad():
        masked = model.fc(
            torch.relu(model.bn1(model.gconv(torch.relu(model.bn0(model.conv0(x)))))).mean((2, 3))
        )
        masked_pruned = apply(model, {"conv0": [0, 2, 3, 4, 6, 7]}, x)(x)
    torch.testing.assert_close(masked_pruned, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (
            {"conv0": [1, 2, 3, 4, 5, 6, 7]},
            r"removes input channels \[0\] of the grouped conv 'gconv' \(groups=2",
        ),
        ({"gconv": [2, 3, 4, 5, 6, 7]}, r"removes output channels \[0, 1\] of the grouped conv 'gconv'"),
    ],
)
def test_grouped_conv_pruned_unevenly_is_refused(plan: dict, message: str) -> None:
    with pytest.raises(SurgeryError, match=message):
        apply(GroupedNet(), plan, torch.randn(1, 3, 6, 6))


# --- a functional F.pad option-A shortcut -----------------------------------------------------------------


class PadBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = conv_bn(cout, cout)
        self.pad = (cout - cin) // 2
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return torch.relu(out + shortcut)


class PadResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 4)
        self.layer1 = PadBlock(4, 4, 1)
        self.layer2 = PadBlock(4, 8, 2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def test_functional_pad_shortcut_layers_are_not_offered() -> None:
    layers = prunable_layers(PadResNet(), torch.randn(1, 3, 8, 8))
    assert [layer.name for layer in layers] == ["layer1.conv1", "layer2.conv1"]


@pytest.mark.parametrize("name", ["conv1", "layer1.conv2", "layer2.conv2"])
def test_functional_pad_shortcut_is_refused_with_advice(name: str) -> None:
    model = PadResNet()
    keep = list(range(width(model, name) // 2))
    with pytest.raises(
        SurgeryError, match=rf"cannot prune layer '{name}'.*functional F\.pad.*ZeroPadShortcut"
    ):
        apply(model, {name: keep}, torch.randn(1, 3, 8, 8))


def test_functional_pad_internal_convs_still_prune() -> None:
    model, x = PadResNet(), torch.randn(2, 3, 8, 8)
    pruned = assert_smaller_and_running(model, {"layer1.conv1": [0, 3], "layer2.conv1": [1, 2, 5]}, x)
    assert pruned.layer2.conv2.in_channels == 3


def test_broken_forward_is_caught_even_when_detection_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(surgery_graph, "_channel_changing_nodes", lambda dg: {})
    with pytest.raises(SurgeryError, match=r"no longer runs on the example input.*F\.pad.*ZeroPadShortcut"):
        apply(PadResNet(), {"layer2.conv2": [0, 1, 2, 3, 4, 5]}, torch.randn(1, 3, 8, 8))
