"""Issue 13, the engine core: one trace per prune; coupled members of different widths (chunk, split,
concatenation, grouped and depthwise convs); pruning equals masking on every family, checked by an oracle
that reads the kept channels from the pruned weights (not from prunekit's plan); save/load round trips."""

from __future__ import annotations

import copy
import gc
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
import prunekit.surgery.graph as surgery_graph
from engine_models import (
    FAMILIES,
    ChannelCountScaled,
    ChunkNet,
    DPNStyle,
    K,
    RegNetStyle,
    ResNeXtStyle,
    ShuffleNetV2Style,
)
from prunekit.errors import ConfigError, PrunekitError, SurgeryError
from prunekit.measure.cost import cost
from prunekit.model_file import save
from prunekit.models import create
from prunekit.surgery import apply
from prunekit.surgery.graph import channel_groups, graph_of


def neutralised(model: nn.Module) -> nn.Module:
    """Biases and BatchNorm shifts zeroed (eval mode): a removed channel then equals a zeroed one."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.uniform_(0.5, 2.0)  # not the identity, so BN scales really act
    return model


def kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which original output channel each pruned filter is: its values are the original's values with
    some input channels left out, and random weights make the largest of them unique to one filter."""
    rows, flat = [], original.flatten(1)
    for filt in pruned.flatten(1):
        value = filt[filt.abs().argmax()]
        candidates = (flat == value).any(1).nonzero().flatten().tolist()
        match = [c for c in candidates if bool(torch.isin(filt, flat[c]).all())]
        assert len(match) == 1, "a pruned filter matches no single original filter"
        rows.append(match[0])
    assert rows == sorted(rows), "kept filters must keep their order"
    return rows


def masked_like(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """`original` with every output channel the pruned model dropped zeroed (read from the weights)."""
    masked = copy.deepcopy(original)
    small = dict(pruned.named_modules())
    with torch.no_grad():
        for name, layer in masked.named_modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                keep = kept_rows(layer.weight, small[name].weight)
                gone = sorted(set(range(layer.weight.shape[0])) - set(keep))
                layer.weight[gone] = 0
    return masked


SELECTIONS = [{"ratio": 0.3}, {"ratio": 0.6}, {"target_macs": 0.5}]
ALL_CRITERIA = ("l1", "fpgm", "random", "hrank", "slimming")


def check_prunes_as_masking_and_round_trips(
    build: Callable[[], nn.Module], tmp_path: Path, methods: Sequence[str] = ALL_CRITERIA
) -> None:
    """Every method at every selection removes MACs (a budget within its band) and equals the original with
    the removed channels zeroed; the l1 ratio-0.6 model round-trips through its file. Network slimming may
    refuse where no BatchNorm follows the layers (a whole model) or they carry too little of the MACs (a
    budget, naming the closest reachable fractions)."""
    torch.manual_seed(0)
    model = neutralised(build())
    x = torch.randn(2, 3, 8, 8)
    dense = cost(model, (1, 3, 8, 8)).macs
    kept = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few calibration images; refused layers' lines
        for method in methods:
            for selection in SELECTIONS:
                try:
                    pruned = prunekit.prune(model, x[:1], method=method, calib=x, **selection).eval()
                except ConfigError as exc:
                    assert method == "slimming", exc
                    reasons = ("closest reachable fractions", "none of the selected layers has one")
                    assert any(reason in str(exc) for reason in reasons), exc
                    continue
                macs = cost(pruned, (1, 3, 8, 8)).macs
                assert macs < dense, (method, selection)
                if "target_macs" in selection:
                    band = 0.02 if method == "slimming" else 0.01  # a knob search steps coarser
                    assert abs(macs / dense - 0.5) <= band * 0.5, (method, macs / dense)
                with torch.no_grad():
                    torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
                if method == "l1" and selection == {"ratio": 0.6}:
                    kept = pruned
    assert kept is not None
    loaded = prunekit.load(save(kept, tmp_path / "pruned.safetensors"), model=build()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), kept(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in kept.state_dict().items()
    }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_prunes_as_masking_and_round_trips(family: str, tmp_path: Path) -> None:
    check_prunes_as_masking_and_round_trips(FAMILIES[family], tmp_path)


def test_a_pruned_model_prunes_again_and_replays_from_its_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model, x = ResNeXtStyle().eval(), torch.randn(2, 3, 8, 8)
    once = prunekit.prune(model, x[:1], method="l1", ratio=0.3)
    twice = prunekit.prune(once, x[:1], method="fpgm", ratio=0.3).eval()
    assert K == 8  # 32 groups of 4: int(0.3 * 32) = 9 go, then int(0.3 * 23) = 6 of the rest
    assert twice.conv2[0].groups == 32 - 9 - 6 and twice.conv2[0].out_channels == 4 * 17
    assert twice.conv1[0].out_channels == twice.conv3[0].in_channels == 4 * 17
    loaded = prunekit.load(save(twice, tmp_path / "twice.safetensors"), model=ResNeXtStyle()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), twice(x))


# ------------------------------------------------------------------------------- one trace per prune


def test_one_l1_budget_prune_traces_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = surgery_graph.trace

    def counting(model: nn.Module, example: torch.Tensor) -> object:
        calls.append(model)
        return real(model, example)

    monkeypatch.setattr(surgery_graph, "trace", counting)
    model = create("resnet20")
    prunekit.prune(model, torch.randn(1, 3, 32, 32), method="l1", target_macs=0.5)
    # listing the groups, the budget's MAC counter, every trial surgery, the final surgery and its checks
    # all read the one graph of `model`; a pruned copy is never traced again
    assert len(calls) == 1 and calls[0] is model


def test_the_cache_follows_shape_changes_and_example_shapes() -> None:
    model = create("resnet20")
    first = graph_of(model, torch.randn(1, 3, 8, 8))
    assert graph_of(model, torch.randn(3, 3, 8, 8)) is first  # batch size does not matter
    assert graph_of(model, torch.randn(1, 3, 16, 16)) is not first
    smaller = apply(model, {"layer1.0.conv1": list(range(8))}, torch.randn(1, 3, 8, 8))
    assert graph_of(smaller, torch.randn(1, 3, 8, 8)).out_channels("layer1.0.conv1") == 8


def test_the_cache_does_not_keep_a_model_alive() -> None:
    model = create("resnet20")
    graph_of(model, torch.randn(1, 3, 8, 8))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


# ------------------------------------------------------------------------------- channel units


def test_chunk_halves_lose_the_same_positions_and_partners_follow() -> None:
    groups = {g.members: g for g in channel_groups(ChunkNet(), torch.randn(1, 3, 8, 8))}
    stem = groups[("stem.0", "right.0")]
    half = 4 * K
    # stem channel p and p + half are the two chunks' position p; right's channel p is added to chunk b's p
    assert stem.units == half
    assert stem.unit_of["stem.0"] == tuple(range(half)) * 2
    assert stem.unit_of["right.0"] == tuple(range(half))
    assert stem.kept_channels([1])["stem.0"] == [1, 1 + half]


def test_removing_one_half_of_a_chunk_tie_is_refused_with_advice() -> None:
    keep = list(range(1, 8 * K))  # drops stem channel 0 but keeps its chunk partner 4K
    with pytest.raises(
        SurgeryError, match=r"'stem.0' removes channels \[0\].*chunk into equal halves.*ratios="
    ):
        apply(ChunkNet(), {"stem.0": keep}, torch.randn(1, 3, 8, 8))


def test_grouped_conv_units_whole_groups_or_same_positions() -> None:
    x = torch.randn(1, 3, 8, 8)
    resnext = {g.members: g for g in channel_groups(ResNeXtStyle(), x)}[("conv1.0", "conv2.0")]
    # 4K groups of 4 channels: whole groups go, the 1×1 producer's channels with them
    assert resnext.units == 4 * K
    assert resnext.unit_of["conv1.0"] == tuple(c // 4 for c in range(16 * K))
    regnet = {g.members: g for g in channel_groups(RegNetStyle(), x)}
    # 2 groups of 6K: position p of both groups goes together; the SE gate multiplies b's channels
    assert regnet[("a.0",)].unit_of["a.0"] == tuple(c % (6 * K) for c in range(12 * K))
    assert regnet[("b.0", "se_expand")].unit_of["se_expand"] == tuple(c % (6 * K) for c in range(12 * K))


def test_prune_whole_groups_of_a_grouped_conv_exactly() -> None:
    torch.manual_seed(2)
    model, x = neutralised(ResNeXtStyle()), torch.randn(2, 3, 8, 8)
    keep_groups = [0, 3, 5]
    keep = [g * 4 + p for g in keep_groups for p in range(4)]
    pruned = apply(model, {"conv2.0": keep}, x[:1])
    conv = pruned.conv2[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (3, 12, 12)
    torch.testing.assert_close(conv.weight, model.conv2[0].weight[keep])
    torch.testing.assert_close(pruned.conv1[0].weight, model.conv1[0].weight[keep])
    torch.testing.assert_close(pruned.conv3[0].weight, model.conv3[0].weight[:, keep])


def test_splitting_a_group_of_a_grouped_conv_is_refused_with_advice() -> None:
    with pytest.raises(SurgeryError, match=r"grouped conv 'conv2.0'.*whole groups.*ratios="):
        apply(ResNeXtStyle(), {"conv2.0": list(range(1, 16 * K))}, torch.randn(1, 3, 8, 8))


def test_channel_shuffle_is_read_as_a_permutation() -> None:
    graph = graph_of(ShuffleNetV2Style(), torch.randn(1, 3, 8, 8))
    assert {name for name in graph.modules if graph.exclusion(name)} == {"head.fc"}
    groups = {g.members: g for g in graph.groups()}
    stage = groups[("stage.0.branch1.1.0", "stage.0.branch2.3.0", "stage.1.branch2.3.0")]
    assert K == 8  # the stage is 128 channels wide: two concatenated halves of 64
    # Stage 0: its shuffle ties concatenated position p of both halves (branch1's p with branch2's p); the
    # chunk after it ties shuffled outputs q and q + 64, i.e. shuffle inputs p and p + 32. 32 units.
    assert stage.units == 32
    assert stage.unit_of["stage.0.branch1.1.0"] == tuple(range(32)) * 2
    assert stage.unit_of["stage.0.branch2.3.0"] == tuple(range(32)) * 2
    # Stage 1 concatenates the first half x1 (stage 0's shuffled outputs 0..63: output q = 2p + k reads
    # input k·64 + p, unit p mod 32) with its branch, whose channel q is tied to x1's q: unit q // 2.
    assert stage.unit_of["stage.1.branch2.3.0"] == tuple(q // 2 for q in range(64))


def test_fixed_slices_refuse_only_the_layers_that_write_into_them() -> None:
    torch.manual_seed(3)
    model, x = neutralised(DPNStyle()), torch.randn(2, 3, 8, 8)
    graph = graph_of(model, x[:1])
    refused = {name: graph.exclusion(name) for name in graph.modules if graph.exclusion(name)}
    assert set(refused) == {"stem.0", "c3.0", "head.fc"}
    assert "slice of fixed channels" in refused["c3.0"] and "ratios=" in refused["c3.0"]
    pruned = prunekit.prune(model, x[:1], method="l1", ratio=0.5).eval()
    assert (pruned.c1[0].out_channels, pruned.c2[0].out_channels, pruned.c3[0].out_channels) == (24, 24, 80)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- validation


def test_a_forward_that_depends_on_the_channel_count_is_caught_at_the_first_differing_layer() -> None:
    model = ChannelCountScaled()
    keep = [0, 1, 2, 3, 4, 5]
    with pytest.raises(SurgeryError, match=r"not the same as masking from layer 'conv2.0'"):
        apply(model, {"conv1.0": keep}, torch.randn(1, 3, 8, 8))
    # the shapes alone would have passed: the check is what refuses it
    from prunekit.surgery.channels import apply_with_report

    pruned, _ = apply_with_report(model, {"conv1.0": keep}, torch.randn(1, 3, 8, 8), check_masking=False)
    assert pruned.conv1[0].out_channels == 6


def test_a_hard_coded_view_names_its_line() -> None:
    class HardView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean((2, 3)).view(-1, 8))

    # found before surgery (the size is written in the code), not when the pruned model fails to run
    with pytest.raises(
        SurgeryError, match=r"cannot prune layer .conv.*view/reshape to \(-1, 8\) at .*ratios="
    ):
        apply(HardView(), {"conv": [0, 1, 2]}, torch.randn(1, 3, 4, 4))


def test_no_family_ends_in_a_foreign_exception_on_bad_input() -> None:
    model = ChunkNet()
    with pytest.raises(PrunekitError):
        prunekit.prune(model, torch.randn(1, 3, 8, 8), method="l1", ratios="stem.0:0.3,right.0:0.5")


@pytest.mark.parametrize("family", ["chunk", "ghostnet", "resnext", "shufflenetv2"])
def test_tpp_and_the_redundancy_graph_on_uneven_coupled_groups(family: str) -> None:
    """Methods that plan per filter keep uneven coupled groups (concatenations, chunks, grouped convs)
    whole with a warning (TPP/GReg) or map their picks through the channel units (redundancy graph), and
    the result still equals masking."""
    torch.manual_seed(0)
    model = neutralised(FAMILIES[family]())
    x = torch.randn(16, 3, 8, 8)
    dense = cost(model, (1, 3, 8, 8)).macs
    with pytest.warns(UserWarning, match="differ in width"):
        tpp = prunekit.prune(model, x[:1], method="tpp", ratio=0.5, calib=x).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer calibration images than the default
        graph = prunekit.prune(model, x[:1], method="redundancy_graph", tau=0.6, calib=x).eval()
    for pruned in (tpp, graph):
        assert cost(pruned, (1, 3, 8, 8)).macs < dense
        with torch.no_grad():
            torch.testing.assert_close(pruned(x[:2]), masked_like(model, pruned)(x[:2]), rtol=1e-4, atol=1e-5)


def test_a_float32_mismatch_is_retried_in_float64_before_a_prune_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pruned conv sums fewer terms than the masked one; through a deep stack with neutralised BatchNorms
    # float32 can round past the tolerance (timm's RepViT did). Simulate that: every float32 comparison fails.
    import prunekit.surgery.channels as channels

    close = channels._close
    compared: list[torch.dtype] = []

    def float32_never_close(reference: torch.Tensor, candidate: torch.Tensor) -> bool:
        compared.append(reference.dtype)
        return reference.dtype == torch.float64 and close(reference, candidate)

    monkeypatch.setattr(channels, "_close", float32_never_close)
    pruned = apply(create("resnet20"), {"conv1": [0, 2, 4, 6, 8, 10, 12, 14]}, torch.randn(1, 3, 32, 32))
    assert pruned.conv1.out_channels == 8 and compared == [torch.float32, torch.float64]
    with pytest.raises(SurgeryError, match=r"not the same as masking from layer"):  # wrong in float64 too
        apply(ChannelCountScaled(), {"conv1.0": [0, 1, 2, 3, 4, 5]}, torch.randn(1, 3, 8, 8))
