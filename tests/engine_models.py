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
