"""Issue 13, engine fixes found by the third-party model sweep (timm CNNs): CSPNet's CrossStage3 concat that
crashed torch-pruning's graph build, timm's BlurPool2d (a functional conv on a weight buffer) found before any
surgery, and ConvNeXt's channels-last Linear MLP whose hidden features prune. Every family prunes as masking
(the oracle of test_engine_families reads the kept channels from the pruned weights) and round-trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
import prunekit.surgery.graph as surgery_graph
from engine_models import (
    THIRD_PARTY_FAMILIES,
    ConvNeXtMLPStyle,
    CrossStage3Style,
    FixedMix,
    K,
    LinearOnWidth,
    PermutedFlatten,
    ResNetBlurStyle,
    SelectiveKernelStyle,
    StdConvNet,
)
from prunekit.errors import PrunekitError, SurgeryError
from prunekit.measure.cost import cost
from prunekit.model_file import save
from prunekit.surgery import apply
from prunekit.surgery.channels import _zeroing_hooks
from prunekit.surgery.graph import channel_groups, graph_of
from test_engine_families import (
    ALL_CRITERIA,
    check_prunes_as_masking_and_round_trips,
    masked_like,
    neutralised,
)


def refusals(model: nn.Module) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning for a line of the model's code is tested elsewhere
        graph = graph_of(model, torch.randn(1, 3, 8, 8))
    return {name: graph.exclusion(name) for name in graph.modules if graph.exclusion(name)}


@pytest.mark.parametrize("family", sorted(THIRD_PARTY_FAMILIES))
def test_every_third_party_family_prunes_as_masking_and_round_trips(family: str, tmp_path: Path) -> None:
    build = THIRD_PARTY_FAMILIES[family]
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in build().modules())
    methods = ALL_CRITERIA if has_bn else ("l1", "fpgm", "random")  # hrank/slimming read BN-led maps
    check_prunes_as_masking_and_round_trips(build, tmp_path, methods)


# ------------------------------------------------------------------------------- F1: CSPNet CrossStage3


def test_cross_stage3_traces_where_torch_pruning_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = {g.members: g for g in channel_groups(CrossStage3Style(), torch.randn(1, 3, 8, 8))}
    half = 4 * K
    # position p of both halves of conv_exp is one unit (the split follows the width); the block's output is
    # added to the first half, so its channel p goes with them
    tied = groups[("conv_exp.0", "blocks.0.conv2.0")]
    assert tied.units == half
    assert tied.unit_of["conv_exp.0"] == tuple(range(half)) * 2
    assert tied.unit_of["blocks.0.conv2.0"] == tuple(range(half))
    # without the guard, torch-pruning 1.6 sums the concat's inferred widths with a None and the whole
    # model is refused (the crash the sweep found on cs3darknet)
    monkeypatch.setattr(surgery_graph, "_guarded_concat_mapping", surgery_graph._TP_CONCAT_MAPPING)
    with pytest.raises(SurgeryError, match=r"could not trace.*TypeError"):
        graph_of(CrossStage3Style(), torch.randn(1, 3, 8, 8))


def test_cross_stage3_cuts_both_halves_and_the_concat_consumer() -> None:
    torch.manual_seed(3)
    model, x = neutralised(CrossStage3Style()), torch.randn(2, 3, 8, 8)
    keep = [0, 2, 3, 17, 31]
    pruned = apply(model, {"blocks.0.conv2.0": keep}, x[:1]).eval()
    half = 4 * K
    both = keep + [half + p for p in keep]  # the same positions of the two halves
    torch.testing.assert_close(pruned.conv_exp[0].weight, model.conv_exp[0].weight[both])
    torch.testing.assert_close(pruned.blocks[0].conv1[0].weight, model.blocks[0].conv1[0].weight[:, keep])
    # the concat is [block(x1) + x1, x2]: the transition reads kept positions of each half, in order
    torch.testing.assert_close(pruned.conv_transition[0].weight, model.conv_transition[0].weight[:, both])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)


def test_cross_stage3_as_timm_writes_its_split_prunes_and_sets_the_attribute(tmp_path: Path) -> None:
    """timm splits with `x.split(self.expand_chs // 2, dim=1)`: the surgery sets expand_chs to twice the
    pruned half, and a model file replays it."""
    torch.manual_seed(9)
    model, x = neutralised(CrossStage3Style("attribute")), torch.randn(2, 3, 8, 8)
    assert set(refusals(model)) == {"head.fc"}
    keep = [1, 4, 9, 30]
    pruned = apply(model, {"conv_exp.0": keep + [4 * K + p for p in keep]}, x[:1]).eval()
    assert (model.expand_chs, pruned.expand_chs) == (8 * K, 8)
    assert pruned.blocks[0].conv2[0].out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
    loaded = prunekit.load(save(pruned, tmp_path / "cs3.safetensors"), model=CrossStage3Style("attribute"))
    assert loaded.expand_chs == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), pruned(x))


def test_a_divided_attribute_that_does_not_give_the_part_size_stays_refused() -> None:
    model = CrossStage3Style("attribute")
    model.expand_chs = 8 * K + 1  # (8K + 1) // 2 is still the part size, but 2 · part is not the attribute
    refused = refusals(model)
    assert {"conv_exp.0", "blocks.0.conv2.0"} <= set(refused)
    assert "x.split(self.expand_chs // 2, dim=1)" in refused["conv_exp.0"]
    assert "size 32 is written in the code" in refused["conv_exp.0"]


# ------------------------------------------------------------------------------- F2: BlurPool


def test_a_blurpool_loses_the_channels_of_the_conv_feeding_it(tmp_path: Path) -> None:
    """timm's BlurPool2d: a depthwise F.conv2d on a per-channel weight buffer, groups from `self.channels`:
    the surgery cuts the buffer's filters and sets `channels`, and a model file replays both."""
    torch.manual_seed(1)
    model, x = neutralised(ResNetBlurStyle()), torch.randn(2, 3, 8, 8)
    assert set(refusals(model)) == {"head.fc"}
    with torch.no_grad():
        model.aa.filt.uniform_(0.1, 1.0)  # distinct filters, so the kept ones can be told apart
    keep = [0, 3, 7, 40]
    pruned = apply(model, {"conv1.0": keep}, x[:1]).eval()
    assert pruned.aa.channels == 4 and model.aa.channels == 6 * K
    torch.testing.assert_close(pruned.aa.filt, model.aa.filt[keep])
    assert "filt" in pruned.aa._non_persistent_buffers_set  # still not in the state dict
    torch.testing.assert_close(pruned.conv2[0].weight, model.conv2[0].weight[:, keep])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
    base = ResNetBlurStyle()
    with torch.no_grad():
        base.aa.filt.copy_(model.aa.filt)  # a non-persistent buffer comes from the constructor, not the file
    loaded = prunekit.load(save(pruned, tmp_path / "blur.safetensors"), model=base).eval()
    assert loaded.aa.channels == 4 and loaded.aa.filt.shape == (4, 1, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))


def test_a_functional_conv_the_surgery_cannot_cut_is_refused_before_surgery_by_line() -> None:
    refused = refusals(FixedMix())  # a fixed 1×1 mixing conv on a (C, C, 1, 1) buffer: not depthwise
    assert set(refused) == {"stem.0", "head.fc"}
    message = refused["stem.0"]
    assert message.startswith("its channels pass through a functional convolution (F.conv2d) at ")
    assert "engine_models.py:" in message and "conv2d(torch.relu(self.stem(x)), self.basis)" in message
    assert "not a Conv2d layer's parameter" in message and "ratios='stem.0:0'" in message
    with pytest.raises(SurgeryError, match=r"cannot prune layer 'stem.0'.*functional convolution"):
        apply(FixedMix(), {"stem.0": list(range(20))}, torch.randn(1, 3, 8, 8))
    # a BlurPool whose groups match two attributes: which one to set is unknown, so it is refused too
    ambiguous = ResNetBlurStyle()
    ambiguous.aa.width = 6 * K
    assert "functional convolution (F.conv2d) at" in refusals(ambiguous)["conv1.0"]


# ------------------------------------------------------------------------------- ConvNeXt Linear MLP


def test_convnext_linear_mlp_hidden_features_are_the_prunable_units() -> None:
    c = 4 * K
    groups = channel_groups(ConvNeXtMLPStyle(), torch.randn(1, 3, 8, 8))
    assert [(g.members, g.units) for g in groups] == [(("blocks.0.fc1",), 4 * c), (("blocks.1.fc1",), 4 * c)]
    refused = refusals(ConvNeXtMLPStyle())
    # the residual width passes through LayerNorms: refused naming the norm, fc2's output included
    assert set(refused) == {
        "stem",
        "blocks.0.conv_dw",
        "blocks.0.fc2",
        "blocks.1.conv_dw",
        "blocks.1.fc2",
        "head.fc",
    }
    assert (
        "LayerNorm" in refused["blocks.0.fc2"] and "statistics span all channels" in refused["blocks.0.fc2"]
    )


def test_pruning_a_channels_last_mlp_cuts_both_linears_and_equals_masking() -> None:
    torch.manual_seed(2)
    model, x = neutralised(ConvNeXtMLPStyle()), torch.randn(2, 3, 8, 8)
    c, keep = 4 * K, [0, 1, 5, 64, 100, 127]
    pruned = apply(model, {"blocks.1.fc1": keep}, x[:1]).eval()
    torch.testing.assert_close(pruned.blocks[1].fc1.weight, model.blocks[1].fc1.weight[keep])
    torch.testing.assert_close(pruned.blocks[1].fc2.weight, model.blocks[1].fc2.weight[:, keep])
    assert (pruned.blocks[1].fc2.in_features, pruned.blocks[0].fc1.out_features) == (6, 4 * c)
    # 64 positions; each removed hidden feature costs c MACs in fc1 and c in fc2 per position
    removed = 4 * c - len(keep)
    assert cost(model, (1, 3, 8, 8)).macs - cost(pruned, (1, 3, 8, 8)).macs == 64 * 2 * c * removed
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)


def test_the_check_zeroes_a_channels_last_linear_on_its_last_dimension() -> None:
    torch.manual_seed(0)
    fc = nn.Linear(3, 4)
    x = torch.randn(2, 5, 6, 3)
    hooks = _zeroing_hooks(nn.Sequential(fc), {("0", "out"): [1, 3]})
    try:
        with torch.no_grad():
            out = fc(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        dense = fc(x)
    assert out.shape == (2, 5, 6, 4)
    assert torch.equal(out[..., [1, 3]], torch.zeros(2, 5, 6, 2))
    torch.testing.assert_close(out[..., [0, 2]], dense[..., [0, 2]])


def test_hidden_features_read_across_the_last_dimension_are_refused_by_name() -> None:
    refused = refusals(ConvNeXtMLPStyle(reduce=True))
    assert "blocks.0.fc1" not in refused  # the plain block still prunes
    message = refused["blocks.1.fc1"]
    assert "the Linear 'blocks.1.fc1' applied to the last dimension of its 4-D input (1, 8, 8, 32)" in message
    assert (
        "only between Linear layers and element-wise ops" in message and "ratios='blocks.1.fc1:0'" in message
    )


def test_a_linear_on_a_spatial_dimension_is_refused_not_read_as_channels() -> None:
    refused = refusals(LinearOnWidth())
    assert set(refused) == {"stem.0", "mix", "head.fc"}
    assert (
        "the Linear 'mix' applied to the last dimension of its 4-D input (1, 32, 8, 8)" in refused["stem.0"]
    )
    assert "coupled to the Conv2d 'conv.0'" in refused["mix"]
    torch.manual_seed(5)
    model, x = neutralised(LinearOnWidth()), torch.randn(2, 3, 8, 8)
    pruned = prunekit.prune(model, x[:1], method="l1", ratio=0.5).eval()
    assert (pruned.stem[0].out_channels, pruned.mix.out_features, pruned.conv[0].out_channels) == (32, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)


def test_a_permute_moving_the_channels_is_refused_even_when_its_sizes_look_unchanged() -> None:
    refused = refusals(PermutedFlatten())
    assert set(refused) == {"conv.0", "fc"}
    assert "a permute (1, 8, 8, 8) -> (1, 8, 8, 8) that moves the channel dimension" in refused["conv.0"]


def test_torch_pruning_baselines_refuse_a_model_torch_pruning_cannot_trace_with_a_prunekit_error() -> None:
    # Torch-Pruning's own pruners (the tp-* comparison methods) build its graph without prunekit's guard
    with pytest.raises(PrunekitError, match=r"Torch-Pruning's tp-magnitude pruner failed on this model"):
        prunekit.prune(CrossStage3Style(), torch.randn(1, 3, 8, 8), method="tp-magnitude", ratio=0.3)


def test_a_weight_standardised_conv_names_the_reshaped_weight_not_a_channel_shuffle() -> None:
    refused = refusals(StdConvNet())  # b standardises its filters over its input channels: a keeps its width
    assert set(refused) == {"a", "fc"}
    message = refused["a"]
    assert "a reshape of the parameter 'b.weight' in the forward ((1, 8, 144) -> (8, 16, 3, 3)" in message
    assert "weight standardisation" in message and "channel shuffle" not in message
    assert "ratios='a:0'" in message
    torch.manual_seed(3)
    model, x = neutralised(StdConvNet()), torch.randn(2, 3, 8, 8)
    pruned = apply(model, {"b": [0, 2, 5]}, x[:1]).eval()  # b's own filters are standardised one by one
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, [0, 2, 5]])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- F3: Selective Kernel


def test_selective_kernel_ties_each_logit_to_its_channel_in_every_path() -> None:
    groups = {g.members: g for g in channel_groups(SelectiveKernelStyle(), torch.randn(1, 3, 8, 8))}
    c = 6 * K
    paths = groups[("paths.0.0", "paths.1.0", "fc_select")]
    assert paths.units == c
    # fc_select's logit p·C + c weighs channel c of path p: both paths' channel c and both logits are one unit
    assert paths.unit_of["fc_select"] == tuple(range(c)) * 2
    assert paths.unit_of["paths.0.0"] == paths.unit_of["paths.1.0"] == tuple(range(c))
    # the split `self.in_channels // self.num_paths` ties position p of both halves of the residual width
    assert groups[("stem.0", "conv2.0")].unit_of["stem.0"] == tuple(range(4 * K)) * 2


def test_pruning_a_selective_kernel_cuts_the_logits_of_every_path_and_sets_the_split() -> None:
    torch.manual_seed(6)
    model, x = neutralised(SelectiveKernelStyle()), torch.randn(2, 3, 8, 8)
    c, keep = 6 * K, [1, 2, 30, 47]
    pruned = apply(model, {"paths.0.0": keep}, x[:1]).eval()
    torch.testing.assert_close(pruned.fc_select.weight, model.fc_select.weight[keep + [c + k for k in keep]])
    torch.testing.assert_close(pruned.paths[1][0].weight, model.paths[1][0].weight[keep])
    torch.testing.assert_close(pruned.fc_reduce.weight, model.fc_reduce.weight[:, keep])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
    half = [0, 5, 31]
    residual = apply(model, {"stem.0": half + [4 * K + p for p in half]}, x[:1]).eval()
    assert (model.in_channels, residual.in_channels) == (8 * K, 6)  # twice the pruned part
    with torch.no_grad():
        torch.testing.assert_close(residual(x), masked_like(model, residual)(x), rtol=1e-4, atol=1e-5)


def test_a_path_view_whose_softmax_mixes_channels_stays_refused() -> None:
    refused = refusals(SelectiveKernelStyle(softmax_dim=2))
    assert set(refused) == {"paths.0.0", "paths.1.0", "fc_select", "head.fc"}
    assert (
        "a view/reshape (1, 96, 1, 1) -> (1, 2, 48, 1, 1) that regroups the channels" in refused["fc_select"]
    )


def test_hrank_ranks_a_channels_last_linear_s_units_as_maps() -> None:
    # A Linear on (B, H, W, C) (ConvNeXt's MLP) gives each hidden unit an H×W map: HRank ranks its post-ReLU
    # map like a conv's, instead of summing a (B, H, W, F) tensor into a wrongly shaped score.
    from prunekit.methods.hrank.linear import firing_counts

    out = torch.zeros(2, 3, 3, 2)
    out[0, :, :, 0] = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 5.0]])  # rank 2
    out[1, 0, 0, 0] = -1.0  # negative: nothing after the ReLU
    out[1, :, :, 1] = torch.eye(3)  # rank 3
    assert firing_counts(out).tolist() == [2, 3]
    assert firing_counts(torch.tensor([[1.0, -1.0], [2.0, 0.0]])).tolist() == [2, 0]
    torch.manual_seed(0)
    model, x = ConvNeXtMLPStyle(), torch.randn(4, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = prunekit.prune(model, x[:1], method="hrank", calib=x, ratio=0.5)
    assert cost(pruned, (1, 3, 8, 8)).macs < cost(model, (1, 3, 8, 8)).macs
