"""Issue 13, channel semantics: splits whose sizes follow the width (Res2Net), GroupNorm (whole groups),
LayerNorm over channels (never prunable through), sizes written in the model's code found before surgery
(views, splits), and refusals that name the layer, the line and what to do. Every family prunes as masking
(the oracle of test_engine_families reads the kept channels from the pruned weights) and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from engine_models import (
    SEMANTIC_FAMILIES,
    AttributeSplit,
    ConvNeXtStyle,
    DPNStyle,
    FixedSplit,
    GroupNormNet,
    InceptionResNetHead,
    K,
    Res2NetStyle,
    Res2NetWidthSplit,
    ResNeXtStyle,
    UnequalAttributeSplit,
)
from prunekit.errors import SurgeryError
from prunekit.model_file import save
from prunekit.surgery import apply
from prunekit.surgery.channels import _cut_group_norm
from prunekit.surgery.graph import channel_groups, graph_of
from test_engine_families import check_prunes_as_masking_and_round_trips, masked_like, neutralised


def refusals(model: nn.Module) -> dict[str, str]:
    graph = graph_of(model, torch.randn(1, 3, 8, 8))
    return {name: graph.exclusion(name) for name in graph.modules if graph.exclusion(name)}


@pytest.mark.parametrize("family", sorted(SEMANTIC_FAMILIES))
def test_every_semantic_family_prunes_as_masking_and_round_trips(family: str, tmp_path: Path) -> None:
    check_prunes_as_masking_and_round_trips(SEMANTIC_FAMILIES[family], tmp_path)


# ------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("how", ["int", "list", "chunk"])
def test_a_split_whose_size_follows_the_width_ties_position_p_of_every_part(how: str) -> None:
    groups = {g.members: g for g in channel_groups(Res2NetWidthSplit(how), torch.randn(1, 3, 8, 8))}
    assert refusals(Res2NetWidthSplit(how)) == {"head.fc": refusals(Res2NetWidthSplit(how))["head.fc"]}
    width = 3 * K
    # conv1's channel p, width + p and 2·width + p are part p of the three parts; convs.0's output is added
    # to part 1, so its channel p goes with them
    tied = groups[("conv1.0", "convs.0.0")]
    assert tied.units == width
    assert tied.unit_of["conv1.0"] == tuple(range(width)) * 3
    assert tied.unit_of["convs.0.0"] == tuple(range(width))


def test_pruned_parts_keep_the_same_positions_and_the_split_follows() -> None:
    torch.manual_seed(4)
    model, x = neutralised(Res2NetWidthSplit("int")), torch.randn(2, 3, 8, 8)
    keep = [0, 5, 7, 20]
    pruned = apply(model, {"convs.0.0": keep}, x[:1])
    rows = [p * 3 * K + k for p in range(3) for k in keep]  # the same positions of the three parts
    torch.testing.assert_close(pruned.conv1[0].weight, model.conv1[0].weight[rows])
    torch.testing.assert_close(pruned.convs[1][0].weight, model.convs[1][0].weight[:, keep])
    assert pruned.conv3[0].in_channels == 4 + 3 * K + 4  # convs.0 (4), convs.1 (whole), part 2 (4)


def test_split_sizes_written_in_the_code_refuse_only_the_layers_writing_into_them() -> None:
    refused = refusals(FixedSplit())
    assert set(refused) == {"a.0", "head.fc"}
    message = refused["a.0"]
    assert "parts [16, 24, 24]" in message and "sizes [16, 24, 24] are written in the code" in message
    assert "engine_models.py:" in message and "torch.split(" in message  # the line of the model's code
    assert "torch.chunk(x, 3, dim=1)" in message and "ratios='a.0:0'" in message
    assert "or read them from one attribute of the module named in that line (e.g. self.width)" in message


def test_res2net_as_written_prunes_and_its_width_attribute_follows(tmp_path: Path) -> None:
    """Res2Net's reference code splits with `self.width`: the surgery sets it to the pruned part width,
    and a file replays it."""
    torch.manual_seed(7)
    model, x = neutralised(Res2NetStyle()), torch.randn(2, 3, 8, 8)
    assert set(refusals(model)) == {"head.fc"}
    keep = [1, 2, 3, 10, 11, 23]
    pruned = apply(model, {"convs.0.0": keep}, x[:1]).eval()
    assert (model.width, pruned.width) == (3 * K, 6)
    rows = [p * 3 * K + k for p in range(3) for k in keep]
    torch.testing.assert_close(pruned.conv1[0].weight, model.conv1[0].weight[rows])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
    loaded = prunekit.load(save(pruned, tmp_path / "res2net.safetensors"), model=Res2NetStyle()).eval()
    assert loaded.width == 6
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))


def test_equal_sizes_read_from_an_attribute_list_are_set_and_unequal_ones_refused() -> None:
    torch.manual_seed(8)
    model, x = neutralised(AttributeSplit()), torch.randn(2, 3, 8, 8)
    keep = [0, 3, 5, 23]  # the same positions of the three parts of 24
    pruned = apply(model, {"a.0": [p * 3 * K + k for p in range(3) for k in keep]}, x[:1]).eval()
    assert pruned.sizes == [4, 4, 4] and model.sizes == [3 * K] * 3
    assert [conv[0].in_channels for conv in pruned.p] == [4, 4, 4]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
    refused = refusals(UnequalAttributeSplit())
    assert set(refused) == {"a.0", "head.fc"}
    assert "unequal parts [16, 24, 32] at" in refused["a.0"] and "split(self.sizes, 1)" in refused["a.0"]
    assert "only equal parts" in refused["a.0"] and "ratios='a.0:0'" in refused["a.0"]


def test_a_fixed_split_warns_once_naming_the_line_and_the_layers() -> None:
    with pytest.warns(
        UserWarning, match=r"engine_models.py:\d+ `parts = torch.split.*keep their channels: a.0;"
    ):
        graph_of(FixedSplit(), torch.randn(1, 3, 8, 8))


# ------------------------------------------------------------------------------- GroupNorm


def test_groupnorm_units_are_whole_groups_and_one_group_is_refused() -> None:
    groups = {g.members: g for g in channel_groups(GroupNormNet(), torch.randn(1, 3, 8, 8))}
    # 4 groups of 16 channels on the residual stage: unit = group
    assert groups[("stem.0", "b.0")].units == 4
    assert groups[("stem.0", "b.0")].unit_of["stem.0"] == tuple(c // 16 for c in range(8 * K))
    assert groups[("a.0",)].units == 6 * K  # num_groups == C: per channel
    assert groups[("c.0",)].units == 2
    refused = refusals(GroupNormNet())
    assert set(refused) == {"single.0", "head.fc"}
    assert "GroupNorm 'single.1' (num_groups=1)" in refused["single.0"]
    assert (
        "statistics span all channels" in refused["single.0"] and "ratios='single.0:0'" in refused["single.0"]
    )


def test_pruning_whole_groups_cuts_the_groupnorm() -> None:
    torch.manual_seed(5)
    model, x = neutralised(GroupNormNet()), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.stem[1].weight.uniform_(0.5, 2.0)
    keep = [c for c in range(8 * K) if c // 16 in (1, 3)]
    pruned = apply(model, {"stem.0": keep}, x[:1])
    for norm in (pruned.stem[1], pruned.b[1]):
        assert (norm.num_groups, norm.num_channels) == (2, 32)
    torch.testing.assert_close(pruned.stem[1].weight, model.stem[1].weight[keep])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)
    # one channel of a group is not a unit: the plan is refused (a zeroed channel changes its group)
    with pytest.raises(SurgeryError, match=r"'stem.0' removes channels \[0\] that are tied"):
        apply(model, {"stem.0": list(range(1, 8 * K))}, x[:1])
    with pytest.raises(SurgeryError, match=r"GroupNorm 'g'.*lose part of a group"):
        _cut_group_norm("g", nn.GroupNorm(2, 8), [0, 1])


def test_a_functional_group_norm_refuses_its_units() -> None:
    class FunctionalGN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 3), nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(nn.functional.group_norm(self.a(x), 4))
            return self.fc(torch.relu(self.b(x)).mean((2, 3)))

    refused = refusals(FunctionalGN())
    assert set(refused) == {"a", "fc"}
    assert "functional F.group_norm at" in refused["a"] and "group_norm(self.a(x), 4)" in refused["a"]
    assert "group count is written in the code" in refused["a"] and "ratios='a:0'" in refused["a"]


# ------------------------------------------------------------------------------- LayerNorm


def test_layernorm_over_channels_refuses_its_units_and_names_the_norm() -> None:
    refused = refusals(ConvNeXtStyle())
    assert set(refused) == {"stem", "dw", "project", "last", "mid", "fc"}
    # channels-last LayerNorm2d (the permutes around it are not what is named)
    assert "LayerNorm 'stem_norm' at" in refused["dw"] and "super().forward(x.permute" in refused["dw"]
    assert refused["stem"].startswith("its channels pass through the LayerNorm 'stem_norm' at ")
    assert "nn.functional.layer_norm" in refused["last"]  # F.layer_norm over the channels
    assert "LayerNorm 'mid_norm'" in refused["mid"]  # nn.LayerNorm after a flatten
    for name, message in refused.items():
        assert name == "fc" or "statistics span all channels" in message and "ratios=" in message
    # InstanceNorm is per channel: its conv stays prunable, as does the MLP's hidden 1×1
    assert {g.members for g in channel_groups(ConvNeXtStyle(), torch.randn(1, 3, 8, 8))} == {
        ("expand",),
        ("inorm_conv",),
    }


# ------------------------------------------------------------------------------- sizes written in code


def test_a_hard_coded_view_is_found_before_surgery_and_refuses_only_its_feeders() -> None:
    torch.manual_seed(6)
    model, x = neutralised(InceptionResNetHead()), torch.randn(2, 3, 8, 8)
    with pytest.warns(
        UserWarning, match=r"view\(-1, 6 \* K\)` do not follow.*keep their channels: c1.0, c2.0;"
    ):
        refused = refusals(model)
    assert set(refused) == {"c1.0", "c2.0", "fc"}
    assert "view/reshape to (-1, 48)" in refused["c2.0"] and "x.view(x.size(0), -1)" in refused["c2.0"]
    assert "F.pad" not in refused["c2.0"]  # the cause is named, not a shortcut
    # `view(n, c)` and `view(b.size(0), -1)` follow the width: the SE block and c3 prune
    pruned = prunekit.prune(model, x[:1], method="l1", ratio=0.5).eval()
    assert (pruned.c2[0].out_channels, pruned.c3[0].out_channels, pruned.se_reduce.out_features) == (
        48,
        16,
        8,
    )
    assert pruned.fc.in_features == 48 + 16
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_like(model, pruned)(x), rtol=1e-4, atol=1e-5)


def test_a_planned_layer_behind_a_written_size_is_refused_by_name() -> None:
    with pytest.raises(
        SurgeryError, match=r"cannot prune layer 'c2.0'.*view/reshape to \(-1, 48\) at .*ratios="
    ):
        apply(InceptionResNetHead(), {"c2.0": list(range(40))}, torch.randn(1, 3, 8, 8))


# ------------------------------------------------------------------------------- messages


def test_dpn_refusal_names_the_slice_its_line_and_channels_within_the_width() -> None:
    refused = refusals(DPNStyle())
    assert set(refused) == {"stem.0", "c3.0", "head.fc"}
    message = refused["c3.0"]
    assert "slice of fixed channels x[:, a:b] (80 -> 64 channels)" in message
    assert "engine_models.py:" in message and "out[:, : 8 * K]" in message
    assert "itself" not in message and "ratios='c3.0:0'" in message
    with pytest.raises(SurgeryError, match=r"cannot prune layer 'c3.0'.*slice.*ratios='c3.0:0'"):
        apply(DPNStyle(), {"c3.0": list(range(40))}, torch.randn(1, 3, 8, 8))


def test_a_grouped_conv_refusal_suggests_leaving_it_out() -> None:
    with pytest.raises(
        SurgeryError, match=r"grouped conv 'conv2.0' \(groups=32, 4 channels per group\).*ratios="
    ):
        apply(ResNeXtStyle(), {"conv2.0": list(range(1, 16 * K))}, torch.randn(1, 3, 8, 8))
