"""Small versions of the CNN families users bring (issue 13): channels that pass through chunks, splits,
concatenations and channel shuffles, grouped and depthwise convolutions. Tiny widths and inputs, so that
every test over them stays fast; each forward is written as the family's reference code writes it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Width multiplier: wide enough that a MAC budget has width steps within 1 % (target_macs=0.5).
K = 8


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Head(nn.Module):
    def __init__(self, cin: int, classes: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ChunkNet(nn.Module):
    """A user model that halves its features with `torch.chunk` and treats the halves differently."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8 * K)
        self.left = conv_bn(4 * K, 6 * K)
        self.right = conv_bn(4 * K, 4 * K, 1)
        self.mix = conv_bn(10 * K, 8 * K, 1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        a, b = torch.chunk(x, 2, dim=1)
        y = torch.cat([torch.relu(self.left(a)), torch.relu(self.right(b)) + b], 1)
        return self.head(torch.relu(self.mix(y)))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split (stride 1) or two branches (stride 2), concatenate, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, mid, 1), nn.ReLU()
            )
        branch_in = cin if stride > 1 else cin // 2
        self.branch2 = nn.Sequential(
            conv_bn(branch_in, mid, 1),
            nn.ReLU(),
            conv_bn(mid, mid, 3, stride, groups=mid),
            conv_bn(mid, mid, 1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Style(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8 * K)
        self.stage = nn.Sequential(ShuffleUnit(8 * K, 16 * K, 2), ShuffleUnit(16 * K, 16 * K, 1))
        self.last = conv_bn(16 * K, 12 * K, 1)
        self.head = Head(12 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.last(self.stage(torch.relu(self.stem(x))))))


class GhostModule(nn.Module):
    """GhostNet: a primary conv, cheap depthwise features from it, both concatenated (then sliced to
    `out`, which keeps everything here, as in the reference with ratio 2)."""

    def __init__(self, cin: int, out: int, relu: bool = True) -> None:
        super().__init__()
        self.out = out
        init = out // 2
        self.primary = nn.Sequential(conv_bn(cin, init, 1), nn.ReLU() if relu else nn.Identity())
        self.cheap = nn.Sequential(conv_bn(init, init, 3, groups=init), nn.ReLU() if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.out]


class GhostNetStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8 * K)
        self.ghost1 = GhostModule(8 * K, 12 * K)
        self.ghost2 = GhostModule(12 * K, 8 * K, relu=False)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.head(self.ghost2(self.ghost1(x)) + x)


class CSPStyle(nn.Module):
    """CSPNet: two 1×1 projections, residual blocks on one part, concatenation, a transition conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8 * K)
        self.part1 = conv_bn(8 * K, 4 * K, 1)
        self.part2 = conv_bn(8 * K, 6 * K, 1)
        self.block = nn.Sequential(conv_bn(6 * K, 4 * K, 1), nn.ReLU(), conv_bn(4 * K, 6 * K))
        self.transition = conv_bn(10 * K, 8 * K, 1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        p2 = torch.relu(self.part2(x))
        p2 = torch.relu(self.block(p2) + p2)
        y = torch.cat([torch.relu(self.part1(x)), p2], 1)
        return self.head(torch.relu(self.transition(y)))


class Res2NetStyle(nn.Module):
    """Res2Net's bottleneck: split the features into `scale` parts of `width`, a 3×3 conv per part fed
    with the previous part's output added, the last part passed through, concatenated back."""

    def __init__(self, width: int = 3 * K, scale: int = 3) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.stem = conv_bn(3, 8 * K)
        self.conv1 = conv_bn(8 * K, width * scale, 1)
        self.convs = nn.ModuleList(conv_bn(width, width) for _ in range(scale - 1))
        self.conv3 = conv_bn(width * scale, 8 * K, 1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        spx = torch.split(torch.relu(self.conv1(x)), self.width, 1)
        outs = []
        sp = spx[0]
        for i, conv in enumerate(self.convs):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = torch.relu(conv(sp))
            outs.append(sp)
        outs.append(spx[self.scale - 1])
        out = self.conv3(torch.cat(outs, 1))
        return self.head(torch.relu(out + x))


class ResNeXtStyle(nn.Module):
    """ResNeXt's bottleneck: 1×1, a grouped 3×3 (cardinality 4K, 4 channels per group:
    more groups than channels per group, so whole groups go), 1×1, residual."""

    def __init__(self, cardinality: int = 4 * K, group_width: int = 4) -> None:
        super().__init__()
        inner = cardinality * group_width
        self.stem = conv_bn(3, 8 * K)
        self.conv1 = conv_bn(8 * K, inner, 1)
        self.conv2 = conv_bn(inner, inner, 3, groups=cardinality)
        self.conv3 = conv_bn(inner, 8 * K, 1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(self.conv3(y) + x))


class RegNetStyle(nn.Module):
    """RegNetY's block: 1×1, grouped 3×3 with 2 groups of 6K (fewer groups than channels per
    group, so the same positions go in both), squeeze-excitation, 1×1; a strided projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8 * K)
        self.a = conv_bn(8 * K, 12 * K, 1)
        self.b = conv_bn(12 * K, 12 * K, 3, stride=2, groups=2)
        self.se_reduce = nn.Conv2d(12 * K, 4 * K, 1)
        self.se_expand = nn.Conv2d(4 * K, 12 * K, 1)
        self.c = conv_bn(12 * K, 10 * K, 1)
        self.proj = conv_bn(8 * K, 10 * K, 1, stride=2)
        self.head = Head(10 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.b(torch.relu(self.a(x))))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return self.head(torch.relu(self.c(y * s) + self.proj(x)))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style: depthwise 3×3 then pointwise 1×1, twice, and an inverted residual."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = 8 * K, 12 * K, 16 * K, 24 * K
        self.stem = conv_bn(3, c1)
        self.dw1, self.pw1 = conv_bn(c1, c1, 3, groups=c1), conv_bn(c1, c2, 1)
        self.dw2, self.pw2 = conv_bn(c2, c2, 3, stride=2, groups=c2), conv_bn(c2, c3, 1)
        self.expand, self.dw3, self.project = (
            conv_bn(c3, c4, 1),
            conv_bn(c4, c4, 3, groups=c4),
            conv_bn(c4, c3, 1),
        )
        self.head = Head(c3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw1(torch.relu(self.dw1(x))))
        x = torch.relu(self.pw2(torch.relu(self.dw2(x))))
        x = x + self.project(torch.relu(self.dw3(torch.relu(self.expand(x)))))
        return self.head(x)


class DPNStyle(nn.Module):
    """DPN's dual path: one conv's output is cut by fixed slices, the first part added to the residual
    path and the rest concatenated to the dense path. The slices keep fixed channel numbers, so the layers
    that write into them cannot lose channels; the others can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8 * K)
        self.c1 = conv_bn(8 * K, 6 * K, 1)
        self.c2 = conv_bn(6 * K, 6 * K)
        self.c3 = conv_bn(6 * K, 10 * K, 1)
        self.head = Head(10 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        out = self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))
        y = torch.cat([x + out[:, : 8 * K], out[:, 8 * K :]], 1)
        return self.head(torch.relu(y))


class ChannelCountScaled(nn.Module):
    """A forward whose result depends on the channel count but whose shapes do not: no shape check sees
    that pruning `conv1` changes what it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.conv2 = conv_bn(8, 8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = x * (8.0 / x.shape[1]) ** 2  # e.g. a normalisation written with the width
        return self.head(torch.relu(self.conv2(x)))


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "chunk": ChunkNet,
    "shufflenetv2": ShuffleNetV2Style,
    "ghostnet": GhostNetStyle,
    "csp": CSPStyle,
    "res2net": Res2NetStyle,
    "resnext": ResNeXtStyle,
    "regnet": RegNetStyle,
    "depthwise": DepthwiseSeparable,
}


# ------------------------------------------------------------------ issue 13: channel semantics (splits
# with sizes, norms over channels, sizes written in the code)


class Res2NetWidthSplit(nn.Module):
    """Res2Net's bottleneck with the split sizes computed from the features' width, the three ways code
    writes it: `torch.split(x, c // scale, 1)` ("int"), a list of such sizes ("list"), `torch.chunk`
    ("chunk"). The parts then follow a pruned width (position p of every part goes together)."""

    def __init__(self, how: str = "int", width: int = 3 * K, scale: int = 3) -> None:
        super().__init__()
        self.how, self.scale = how, scale
        self.stem = conv_bn(3, 8 * K)
        self.conv1 = conv_bn(8 * K, width * scale, 1)
        self.convs = nn.ModuleList(conv_bn(width, width) for _ in range(scale - 1))
        self.conv3 = conv_bn(width * scale, 8 * K, 1)
        self.head = Head(8 * K)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.how == "chunk":
            return torch.chunk(x, self.scale, 1)
        width = x.size(1) // self.scale
        return torch.split(x, width if self.how == "int" else [width] * self.scale, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        spx = self.parts(torch.relu(self.conv1(x)))
        outs, sp = [], spx[0]
        for i, conv in enumerate(self.convs):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = torch.relu(conv(sp))
            outs.append(sp)
        outs.append(spx[self.scale - 1])
        return self.head(torch.relu(self.conv3(torch.cat(outs, 1)) + x))


class FixedSplit(nn.Module):
    """`torch.split(x, [2K, 3K, 3K], 1)`: sizes written in the code, so `a` (which writes into them) keeps
    its channels; the per-part convs and the rest still prune."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 4 * K)
        self.a = conv_bn(4 * K, 8 * K, 1)
        self.p = nn.ModuleList(conv_bn(c, 4 * K) for c in (2 * K, 3 * K, 3 * K))
        self.mix = conv_bn(12 * K, 8 * K, 1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(torch.relu(self.a(torch.relu(self.stem(x)))), [2 * K, 3 * K, 3 * K], 1)
        y = torch.cat([torch.relu(conv(part)) for conv, part in zip(self.p, parts, strict=True)], 1)
        return self.head(torch.relu(self.mix(y)))


def conv_gn(cin: int, cout: int, groups: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.GroupNorm(groups, cout))


class GroupNormNet(nn.Module):
    """GroupNorm everywhere (as in detection backbones): 4 groups of 2K on a residual stage, one channel
    per group (num_groups == C), and one group (`single`, whose statistics span all its channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_gn(3, 8 * K, 4)
        self.a = conv_gn(8 * K, 6 * K, 6 * K)  # num_groups == C: per channel, like InstanceNorm
        self.b = conv_gn(6 * K, 8 * K, 4)
        self.single = conv_gn(8 * K, 6 * K, 1)
        self.c = conv_gn(6 * K, 8 * K, 2, k=1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b(torch.relu(self.a(x))) + x)
        return self.head(torch.relu(self.c(torch.relu(self.single(x)))))


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: permute to channels-last, nn.LayerNorm(C), permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtStyle(nn.Module):
    """ConvNeXt's block (timm's conv-MLP form): depthwise 7×7, LayerNorm2d, 1×1 expand, GELU, 1×1
    project, residual; a stem with LayerNorm2d, a functional `F.layer_norm` over the channels, an
    InstanceNorm (per channel: prunable) and a head whose hidden Linear feeds an nn.LayerNorm. Every unit
    a LayerNorm sees keeps its channels; `expand`, `inorm_conv` and `mid` prune."""

    def __init__(self) -> None:
        super().__init__()
        c = 8 * K
        self.stem, self.stem_norm = nn.Conv2d(3, c, 3, padding=1), LayerNorm2d(c)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = LayerNorm2d(c)
        self.expand, self.project = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
        self.inorm_conv, self.inorm = nn.Conv2d(c, 6 * K, 3, padding=1), nn.InstanceNorm2d(6 * K, affine=True)
        self.last = nn.Conv2d(6 * K, 6 * K, 1)
        self.mid, self.mid_norm, self.fc = nn.Linear(6 * K, 4 * K), nn.LayerNorm(4 * K), nn.Linear(4 * K, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x))
        x = x + self.project(nn.functional.gelu(self.expand(self.norm(self.dw(x)))))
        y = torch.relu(self.inorm(self.inorm_conv(x)))
        y = self.last(y).permute(0, 2, 3, 1)
        y = nn.functional.layer_norm(y, (y.shape[-1],)).permute(0, 3, 1, 2)
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)
        return self.fc(self.mid_norm(torch.relu(self.mid(y))))


class InceptionResNetHead(nn.Module):
    """Inception-ResNet-v2's ending: a branch flattened with a hard-coded `view(-1, 6K)`, one with
    `view(x.size(0), -1)`, an SE gate that reshapes with the width it reads (`view(b, c)`), concatenated
    into the classifier. Only `c2` (and its partner in the residual) feeds the written size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 4 * K)
        self.c1 = conv_bn(4 * K, 6 * K)
        self.c2 = conv_bn(6 * K, 6 * K)
        self.c3 = conv_bn(4 * K, 4 * K)
        self.se_reduce, self.se_expand = nn.Linear(4 * K, 2 * K), nn.Linear(2 * K, 4 * K)
        self.fc = nn.Linear(10 * K, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        a = torch.relu(self.c1(x))
        a = torch.relu(self.c2(a) + a)
        a = nn.functional.adaptive_avg_pool2d(a, 1).view(-1, 6 * K)
        b = torch.relu(self.c3(x))
        n, c, _, _ = b.size()
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(b.mean((2, 3)).view(n, c)))))
        b = b * gate.view(n, c, 1, 1)
        b = nn.functional.adaptive_avg_pool2d(b, 1).view(b.size(0), -1)
        return self.fc(torch.cat([a, b], 1))


SEMANTIC_FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "res2net_split_int": lambda: Res2NetWidthSplit("int"),
    "res2net_split_list": lambda: Res2NetWidthSplit("list"),
    "res2net_chunk": lambda: Res2NetWidthSplit("chunk"),
    "fixed_split": FixedSplit,
    "groupnorm": GroupNormNet,
    "convnext": ConvNeXtStyle,
    "inception_resnet_head": InceptionResNetHead,
}


class AttributeSplit(nn.Module):
    """Equal parts read from one attribute as a list (`x.split(self.sizes, 1)`): the surgery sets it."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = [3 * K, 3 * K, 3 * K]
        self.stem = conv_bn(3, 4 * K)
        self.a = conv_bn(4 * K, 9 * K, 1)
        self.p = nn.ModuleList(conv_bn(3 * K, 4 * K) for _ in range(3))
        self.mix = conv_bn(12 * K, 8 * K, 1)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.relu(self.a(torch.relu(self.stem(x)))).split(self.sizes, 1)
        y = torch.cat([torch.relu(conv(part)) for conv, part in zip(self.p, parts, strict=True)], 1)
        return self.head(torch.relu(self.mix(y)))


class UnequalAttributeSplit(AttributeSplit):
    """Unequal parts from an attribute: a plan could empty one part, so `a` keeps its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = [2 * K, 3 * K, 4 * K]
        self.p = nn.ModuleList(conv_bn(c, 4 * K) for c in self.sizes)


SEMANTIC_FAMILIES["attribute_split"] = AttributeSplit


# ------------------------------------------------------------ families of the third-party sweep (issue 13)


class DarkBlock(nn.Module):
    """timm's cspnet DarkBlock: a 1×1 bottleneck, a 3×3 conv, the shortcut added after the block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(c, c // 2, 1), conv_bn(c // 2, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x)))) + x


class CrossStage3Style(nn.Module):
    """timm's CSPNet CrossStage3 (cs3darknet): a 1×1 expansion split into halves, DarkBlocks on the first
    half, the halves concatenated into a transition conv. torch-pruning 1.6 cannot infer the width of
    `block(x1) + x1` and crashed building its graph. `split="width"` splits with a size read from the tensor;
    `"attribute"` as timm writes it, `x.split(self.expand_chs // 2, dim=1)` (the surgery sets expand_chs)."""

    def __init__(self, split: str = "width") -> None:
        super().__init__()
        self.split = split
        self.expand_chs = 8 * K
        self.stem = conv_bn(3, 4 * K)
        self.conv_exp = conv_bn(4 * K, 8 * K, 1)
        self.blocks = nn.Sequential(DarkBlock(4 * K))  # one block: the concat then reads a split part
        self.conv_transition = conv_bn(8 * K, 6 * K, 1)
        self.head = Head(6 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_exp(torch.relu(self.stem(x))))
        if self.split == "width":
            x1, x2 = x.split(x.size(1) // 2, dim=1)
        else:
            x1, x2 = x.split(self.expand_chs // 2, dim=1)
        x1 = self.blocks(x1)
        return self.head(torch.relu(self.conv_transition(torch.cat([x1, x2], dim=1))))


class BlurPool(nn.Module):
    """timm's BlurPool2d, forward as timm writes it: a fixed binomial blur applied by a functional depthwise
    conv whose weight is a (non-persistent) buffer and whose groups come from an attribute, read a line
    earlier, after a reflection pad. The surgery cuts the buffer and sets `channels`."""

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.channels, self.stride, self.filt_size = channels, stride, 3
        coeffs = torch.tensor([1.0, 2.0, 1.0]) / 4
        blur = (coeffs[:, None] * coeffs[None, :])[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("filt", blur, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, [1, 1, 1, 1], mode="reflect")
        channels = self.channels
        weight = self.filt
        return nn.functional.conv2d(x, weight, stride=self.stride, groups=channels)


class ResNetBlurStyle(nn.Module):
    """timm's resnetblur basic block: the first conv, then BlurPool downsamples, then the second conv; the
    shortcut a strided 1×1 conv. `conv1`'s channels pass through the blur, which loses them too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 4 * K)
        self.conv1, self.aa, self.conv2 = conv_bn(4 * K, 6 * K), BlurPool(6 * K), conv_bn(6 * K, 8 * K)
        self.down = conv_bn(4 * K, 8 * K, 1, stride=2)
        self.conv3 = conv_bn(8 * K, 8 * K)
        self.head = Head(8 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv2(self.aa(torch.relu(self.conv1(x)))) + self.down(x))
        return self.head(torch.relu(self.conv3(x)))


class FixedMix(nn.Module):
    """A fixed channel-mixing transform applied as a functional 1×1 conv on a (C, C, 1, 1) weight buffer (not
    depthwise): nothing the surgery could cut, so the conv feeding it keeps its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = conv_bn(3, 4 * K), conv_bn(4 * K, 4 * K)
        self.register_buffer("basis", torch.linalg.qr(torch.randn(4 * K, 4 * K))[0][:, :, None, None])
        self.head = Head(4 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.conv2d(torch.relu(self.stem(x)), self.basis)
        return self.head(torch.relu(self.conv(x)))


class ConvNeXtMLPBlock(nn.Module):
    """timm's ConvNeXt block with `conv_mlp=False`: depthwise 7×7, permute to channels-last, LayerNorm,
    Linear(C, 4C), GELU, Linear(4C, C), permute back, layer scale, residual."""

    def __init__(self, c: int, reduce: bool = False) -> None:
        super().__init__()
        self.reduce = reduce
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        h = nn.functional.gelu(self.fc1(self.norm(x)))
        if self.reduce:  # a user's variation that reads every hidden feature: they keep their width
            h = h - h.mean(-1, keepdim=True)
        x = self.fc2(h).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXtMLPStyle(nn.Module):
    """A stem with channels-last LayerNorm2d and two ConvNeXt blocks with Linear MLPs: the hidden 4C features
    of each block (between its two Linears) prune; the LayerNorm'd residual width stays."""

    def __init__(self, reduce: bool = False) -> None:
        super().__init__()
        c = 4 * K
        self.stem, self.stem_norm = nn.Conv2d(3, c, 3, padding=1), LayerNorm2d(c)
        self.blocks = nn.Sequential(ConvNeXtMLPBlock(c), ConvNeXtMLPBlock(c, reduce))
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem_norm(self.stem(x))))


class LinearOnWidth(nn.Module):
    """A Linear applied to a conv's (N, C, H, W) output mixes the W positions, not channels: the conv feeding
    it and the Linear keep their widths; the conv after it prunes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix = conv_bn(3, 4 * K), nn.Linear(8, 8)
        self.conv = conv_bn(4 * K, 4 * K)
        self.head = Head(4 * K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(self.mix(torch.relu(self.stem(x))))))


class PermutedFlatten(nn.Module):
    """Channels permuted to the last dimension and flattened into the classifier, at C == H == W (8): the
    permute must still be read as moving the channels (its sizes look unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = conv_bn(3, 16), conv_bn(16, 8)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(torch.relu(self.stem(x))))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))


class StdConv(nn.Conv2d):
    """timm's StdConv2d (NF-ResNet's ScaledStdConv2d): each filter standardised in the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = nn.functional.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=1e-6
        ).reshape_as(self.weight)
        return self._conv_forward(x, weight, self.bias)


class StdConvNet(nn.Module):
    """Two weight-standardised convs: removing the second's input channels would change its statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = StdConv(3, 16, 3, padding=1), StdConv(16, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


class SelectiveKernelStyle(nn.Module):
    """timm's SelectiveKernel (SKNet, skresnet) in a residual block: the input split into two paths with
    `torch.split(x, self.in_channels // self.num_paths, 1)`, a 3×3 and a dilated 3×3 conv per path, stacked;
    an attention that sums the paths, pools, reduces and selects one logit per path and channel
    (`x.view(B, self.num_paths, C // self.num_paths, H, W)`, softmax over the paths); the paths weighted and
    summed. `softmax_dim=2` (a softmax over the channels instead) mixes channels: refused."""

    def __init__(self, softmax_dim: int = 1) -> None:
        super().__init__()
        self.softmax_dim = softmax_dim
        self.in_channels, self.num_paths = 8 * K, 2
        self.stem = conv_bn(3, 8 * K)
        dilated = nn.Conv2d(4 * K, 6 * K, 3, padding=2, dilation=2, bias=False)
        self.paths = nn.ModuleList([conv_bn(4 * K, 6 * K), nn.Sequential(dilated, nn.BatchNorm2d(6 * K))])
        self.fc_reduce, self.bn = nn.Conv2d(6 * K, 2 * K, 1, bias=False), nn.BatchNorm2d(2 * K)
        self.fc_select = nn.Conv2d(2 * K, 12 * K, 1, bias=False)
        self.conv2 = conv_bn(6 * K, 8 * K)
        self.head = Head(8 * K)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        x = x.sum(1).mean((2, 3), keepdim=True)
        x = self.fc_select(torch.relu(self.bn(self.fc_reduce(x))))
        B, C, H, W = x.shape
        x = x.view(B, self.num_paths, C // self.num_paths, H, W)
        return torch.softmax(x, dim=self.softmax_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = shortcut = torch.relu(self.stem(x))
        x_split = torch.split(x, self.in_channels // self.num_paths, 1)
        x = torch.stack([torch.relu(op(x_split[i])) for i, op in enumerate(self.paths)], dim=1)
        x = torch.sum(x * self.attn(x), dim=1)
        return self.head(torch.relu(self.conv2(x) + shortcut))


THIRD_PARTY_FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "cspnet_cross_stage3": CrossStage3Style,
    "cspnet_cross_stage3_timm_split": lambda: CrossStage3Style("attribute"),
    "resnetblur": ResNetBlurStyle,
    "convnext_linear_mlp": ConvNeXtMLPStyle,
    "selective_kernel": SelectiveKernelStyle,
}
