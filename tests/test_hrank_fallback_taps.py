"""HRank on models that declare no taps: each conv is ranked after the activation its output flows into, or
on its own output, decided per layer from the forward code; one warning; no crash on SE blocks,
EfficientNet-style MBConvs or NASNet-style cells (`models.taps.fallback_activation_taps`)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit
from prunekit.methods.hrank import hrank_scores
from prunekit.methods.hrank.layouts import layout_for
from prunekit.models import FeatureTap
from prunekit.models.taps import fallback_activation_taps

# ---------------------------------------------------------------- small versions of the families


class SEBlock(nn.Module):
    """A residual block with squeeze-and-excitation on 1×1 convs; one ReLU module serves the whole block,
    as in many SE-ResNet codes (hooks on it would fire three times per forward)."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        gate = torch.sigmoid(self.fc2(self.relu(self.fc1(out.mean((2, 3), keepdim=True)))))
        return self.relu(out * gate + x)


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn, self.act = (
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.block1, self.block2 = SEBlock(16), SEBlock(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(self.act(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


class MBConv(nn.Module):
    """EfficientNet's block: 1×1 expand-BN-SiLU, depthwise 3×3-BN-SiLU, SE with a functional SiLU and a
    sigmoid gate, 1×1 project-BN, residual when the shape allows."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid, squeezed = cin * expand, max(1, cin // 4)
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU()
        )
        self.se_reduce, self.se_expand = nn.Conv2d(mid, squeezed, 1), nn.Conv2d(squeezed, mid, 1)
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.dw(self.expand(x))
        gate = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(out, 1)))))
        out = self.project(out * gate)
        return out + x if self.residual else out


class EfficientNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16, 16, 2, 1), MBConv(16, 24, 2, 2), MBConv(24, 24, 2, 1))
        self.head = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1))


class SepConv(nn.Module):
    """NASNet's separable conv: a functional ReLU first, then depthwise, pointwise, BN."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.pointwise(self.depthwise(F.relu(x))))


class Cell(nn.Module):
    """A NASNet-style normal cell: a 1×1 input projection, separable-conv and pooling branches, concat."""

    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_prev, self.bn_prev = nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c)
        self.sep1, self.sep2 = SepConv(c), SepConv(c)
        self.pool = nn.AvgPool2d(3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn_prev(self.conv_prev(self.relu(x)))
        return torch.cat([self.sep1(h) + self.pool(h), self.sep2(h) + h, self.pool(h)], 1)


class NASNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.cell1, self.cell2 = Cell(12, 8), Cell(24, 8)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cell2(self.cell1(self.stem_bn(self.stem(x))))
        return self.fc(self.relu(x).mean((2, 3)))


FAMILIES = {"se": SENet, "efficientnet": EfficientNetLike, "nasnet": NASNetLike}
X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def taps_of(model: nn.Module) -> dict[str, str]:
    return {tap.conv: tap.module for tap in fallback_activation_taps(model).taps}


# ---------------------------------------------------------------- where each conv is read


def test_se_block_convs_are_read_on_their_own_output_when_the_relu_is_shared() -> None:
    taps = taps_of(SENet())
    # stem → bn → act (used once): activated maps. The block's one ReLU runs three times per forward, so
    # its convs (and the SE convs, whose outputs also reach it or a sigmoid function) read their own output.
    assert taps["stem"] == "act"
    for block in ("block1", "block2"):
        for conv in ("conv1", "conv2", "fc1", "fc2"):
            assert taps[f"{block}.{conv}"] == f"{block}.{conv}"


def test_efficientnet_convs_are_read_after_their_silu_modules() -> None:
    found = fallback_activation_taps(EfficientNetLike())
    taps = {tap.conv: tap.module for tap in found.taps}
    assert taps["stem.0"] == "stem.2" and taps["head.0"] == "head.2"
    for b in range(3):
        assert taps[f"blocks.{b}.expand.0"] == f"blocks.{b}.expand.2"
        assert taps[f"blocks.{b}.dw.0"] == f"blocks.{b}.dw.2"  # the depthwise conv too
        # Functional SiLU, sigmoid function, no activation after the projection: own output.
        for conv in ("se_reduce", "se_expand", "project.0"):
            assert taps[f"blocks.{b}.{conv}"] == f"blocks.{b}.{conv}"
    assert found.traced and found.untapped == ()
    assert len(found.raw) == 9


def test_nasnet_cell_follows_the_data_flow_not_the_registration_order() -> None:
    taps = taps_of(NASNetLike())
    # The stem's output flows through stem_bn into cell1's ReLU module, which runs once.
    assert taps["stem"] == "cell1.relu"
    # cell1's output is concatenated before cell2.relu: not the conv's own activation.
    assert taps["cell1.conv_prev"] == "cell1.conv_prev"
    assert taps["cell2.sep1.pointwise"] == "cell2.sep1.pointwise"


def test_a_conv_run_twice_is_not_tapped_and_is_named() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.relu(self.conv(self.conv(x)))

    found = fallback_activation_taps(Twice())
    assert found.taps == () and found.untapped == ("conv",)


def test_a_branch_run_only_in_training_is_traced_as_the_criteria_run_the_model() -> None:
    class WithAuxHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu, self.aux = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            out = self.relu(self.conv(x))
            return out[:, :2] + self.aux(out) if self.training else out

    model = WithAuxHead().train()
    found = fallback_activation_taps(model)
    # Eval mode, as HRank's pass runs: the auxiliary conv never fires there, so it has no tap.
    assert found.taps == (FeatureTap("conv", "relu"),) and found.untapped == ("aux",)
    assert model.training and model.conv.training  # the model's own flags are back


def test_an_untraceable_forward_reads_every_conv_on_its_own_output() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 4, 3), nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.relu(self.conv(x)) if x.sum() > 0 else self.conv(x)

    found = fallback_activation_taps(DataDependent())
    assert not found.traced and found.taps == (FeatureTap("conv", "conv"),) and found.raw == ("conv",)


@pytest.mark.parametrize("family", FAMILIES)
def test_fallback_taps_give_each_conv_its_own_channels(family: str) -> None:
    model = FAMILIES[family]().eval()
    with pytest.warns(UserWarning, match="HRank has no tap points"):
        taps = layout_for(model).taps
    scores = hrank_scores(model, X, taps, n_images=6)
    modules = dict(model.named_modules())
    convs = [name for name, m in modules.items() if isinstance(m, nn.Conv2d)]
    assert sorted(scores) == sorted(convs)
    for conv, score in scores.items():
        assert score.shape == (modules[conv].out_channels,)


def test_se_scores_are_the_ranks_of_the_maps_each_conv_is_read_on() -> None:
    model = SENet().eval()
    with pytest.warns(UserWarning, match="HRank has no tap points"):
        scores = hrank_scores(model, X, layout_for(model).taps, n_images=6)
    # The SE convs see 1×1 maps, read before any activation: rank 1 (a random map is never exactly 0).
    for conv in ("block1.fc1", "block1.fc2", "block2.fc1", "block2.fc2"):
        assert torch.equal(scores[conv], torch.ones_like(scores[conv]))
    # A raw 32×32 conv output of random data is full rank; the stem is read after its ReLU, which zeroes
    # whole rows and columns of some maps, so its mean rank is at most 32.
    assert torch.equal(scores["block1.conv1"], torch.full((16,), 32.0))
    assert float(scores["stem"].max()) <= 32.0


@pytest.mark.parametrize("family", FAMILIES)
def test_hrank_prunes_every_family_with_one_warning(family: str) -> None:
    model = FAMILIES[family]().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # nothing deduplicated by the filter: the count is the code's own
        pruned = prunekit.prune(model, X, method="hrank", rates=0.3, n_images=6)
    fallback = [w for w in caught if "HRank has no tap points" in str(w.message)]
    assert len(fallback) == 1
    with torch.no_grad():
        assert pruned.eval()(X).shape == (6, 10)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < before


def test_the_layout_is_traced_once_per_model_and_again_after_a_change() -> None:
    model = SENet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = layout_for(model), layout_for(model)
        model.block2.extra = nn.Conv2d(16, 16, 1)  # a new conv: new entries, traced again
        third = layout_for(model)
    assert first is second and len(third.entries) == len(first.entries) + 1
    assert len(caught) == 2
