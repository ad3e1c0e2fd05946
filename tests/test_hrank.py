"""HRank: the rank criterion, tap points, compress_rate mapping, selection and the method's plan."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import prunekit.methods.hrank.criterion as hrank
from prunekit.errors import ConfigError
from prunekit.methods.base import create_method
from prunekit.methods.hrank import HRank, HRankOptions, feature_map_ranks, hrank_scores, hrank_select
from prunekit.methods.hrank.layouts import Tap, compress_rates, conv_rates, layout_for
from prunekit.models import create


def meta_layout(arch: str):  # noqa: ANN201 - the layout only needs module names and shapes
    with torch.device("meta"):
        return layout_for(create(arch))


# ---------------------------------------------------------------- criterion


def test_ranks_of_hand_made_maps() -> None:
    u, v = torch.arange(1.0, 6.0), torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0])
    known = torch.zeros(5, 5)
    known[0, 0], known[1, 1], known[2, :] = 2.0, 3.0, 1.0  # rows 0..2 independent, rows 3, 4 zero
    maps = torch.stack([torch.zeros(5, 5), torch.outer(u, v), torch.eye(5), known, torch.ones(5, 5)])
    assert feature_map_ranks(maps.view(1, 5, 5, 5)).tolist() == [[0, 1, 5, 3, 1]]


def test_rank_of_a_non_square_map_and_a_tiny_but_nonzero_one() -> None:
    maps = torch.stack([torch.eye(3, 6), 1e-30 * torch.eye(3, 6)]).view(2, 1, 3, 6)
    assert feature_map_ranks(maps).tolist() == [[3], [3]]  # relative tolerance: scale does not matter


def test_ranks_right_at_the_tolerance_follow_matrix_rank() -> None:
    # matrix_rank drops singular values <= sigma_max * max(H, W) * eps; the full-rank shortcut must agree on
    # both sides of that line.
    eps, n = torch.finfo(torch.float32).eps, 8
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    maps = []
    for factor in (0.5, 0.9, 1.1, 1.5, 2.5, 4.0, 10.0):
        sigma = torch.ones(n, dtype=torch.float64)
        sigma[-1] = factor * n * eps
        maps.append((q * sigma) @ q.T)
    stack = torch.stack(maps).float().view(1, -1, n, n)
    assert torch.equal(feature_map_ranks(stack), torch.linalg.matrix_rank(stack))
    assert feature_map_ranks(stack)[0, 0] == n - 1 and feature_map_ranks(stack)[0, -1] == n


def test_batched_ranks_equal_the_per_map_loop() -> None:
    torch.manual_seed(1)
    low = torch.randn(6, 5, 12, 3) @ torch.randn(6, 5, 3, 12)  # rank <= 3
    maps = torch.relu(torch.cat([torch.randn(6, 5, 12, 12), low], 1))
    maps[2, 4] = 0
    loop = torch.tensor([[torch.linalg.matrix_rank(maps[i, j]).item() for j in range(10)] for i in range(6)])
    assert torch.equal(feature_map_ranks(maps), loop)
    assert feature_map_ranks(maps)[2, 4] == 0


def test_ranks_reject_a_flat_tensor() -> None:
    with pytest.raises(ValueError, match=r"must be \(B, C, H, W\), got shape \(4, 4\)"):
        feature_map_ranks(torch.zeros(4, 4))


# ---------------------------------------------------------------- scores through the taps


def reference_scores(model: nn.Module, images: Tensor, taps: list[Tap]) -> dict[str, Tensor]:
    """Per-map loop over hooked outputs: what HRank's rank_generation.py computes."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.clone()))
        for name in {t.module for t in taps}
    ]
    model.eval()
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    out = {}
    for t in taps:
        maps = seen[t.module][:, t.start : t.stop]
        ranks = [
            [torch.linalg.matrix_rank(maps[i, j]).item() for j in range(maps.shape[1])]
            for i in range(len(maps))
        ]
        out[t.conv] = torch.tensor(ranks, dtype=torch.float64).mean(0).float()
    return out


def test_resnet20_scores_are_mean_ranks_in_range() -> None:
    model = create("resnet20")
    images = torch.randn(6, 3, 32, 32)
    scores = hrank_scores(model, images, n_images=6, batch_size=4)  # two batches: 4 + 2
    assert model.training  # the flag is restored
    taps = list(layout_for(model).taps)
    assert len(scores) == 19 and [t.conv for t in taps] == list(scores)
    expected = reference_scores(model, images, taps)
    for conv, score in scores.items():
        side = 32 if conv == "conv1" or conv.startswith("layer1") else 16 if conv.startswith("layer2") else 8
        assert score.dtype == torch.float32 and score.shape == (model.get_submodule(conv).out_channels,)
        assert 0 <= score.min() and score.max() <= side
        assert torch.equal(score, expected[conv]), conv


def test_scores_take_the_first_n_images_from_a_loader_of_pairs() -> None:
    model = create("resnet20")
    images = torch.randn(10, 3, 32, 32)
    loader = [(images[:3], torch.zeros(3)), (images[3:6], torch.zeros(3)), (images[6:], torch.zeros(4))]
    from_loader = hrank_scores(model, loader, n_images=5)
    direct = hrank_scores(model, images[:5], n_images=5, batch_size=5)
    assert all(torch.equal(from_loader[c], direct[c]) for c in direct)
    with pytest.warns(UserWarning, match="on 10 images, fewer than n_images=768"):
        hrank_scores(model, images)


def test_vgg_taps_see_relu_maps_and_pooled_maps() -> None:
    model = create("vgg16_bn")
    layout = layout_for(model)
    # conv2 (features.3) is ranked on the max-pool after its ReLU (features.6); conv13 is not ranked.
    assert {t.conv: t.module for t in layout.taps}["features.3"] == "features.6"
    assert "features.40" not in {t.conv for t in layout.taps}
    shapes: list[tuple[int, ...]] = []

    def spy(maps: Tensor) -> Tensor:
        shapes.append(tuple(maps.shape[1:]))
        return feature_map_ranks(maps)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hrank, "feature_map_ranks", spy)
        scores = hrank_scores(model, torch.randn(2, 3, 32, 32), n_images=2)
    assert shapes == [
        (64, 32, 32), (64, 16, 16), (128, 16, 16), (128, 8, 8), (256, 8, 8), (256, 8, 8),
        (256, 4, 4), (512, 4, 4), (512, 4, 4), (512, 2, 2), (512, 2, 2), (512, 2, 2),
    ]  # fmt: skip
    assert scores["features.3"].shape == (64,) and scores["features.3"].max() <= 16


def test_googlenet_taps_split_inception_outputs_by_branch() -> None:
    layout = meta_layout("googlenet")
    taps = {t.conv: t for t in layout.taps}
    assert taps["a3.branch1x1.0"] == Tap("a3.branch1x1.0", "a3", 0, 64)
    assert taps["a3.branch3x3.3"] == Tap("a3.branch3x3.3", "a3", 64, 192)
    # Both 3x3 convs of the "5x5" branch use the branch output's ranks; b3 and e4 on pooled maps.
    assert taps["a3.branch5x5.3"] == Tap("a3.branch5x5.3", "a3", 192, 224)
    assert taps["a3.branch5x5.6"] == Tap("a3.branch5x5.6", "a3", 192, 224)
    assert taps["b3.branch_pool.1"] == Tap("b3.branch_pool.1", "maxpool1", 416, 480)
    assert taps["e4.branch1x1.0"].module == "maxpool2"
    assert "a3.branch3x3.0" not in taps  # 1x1 reductions are never ranked


def test_densenet_and_resnet50_taps() -> None:
    dense = {t.conv: t for t in meta_layout("densenet40").taps}
    assert dense["conv1"] == Tap("conv1", "dense1.0.relu", 0, None)
    assert dense["dense1.0.conv1"] == Tap("dense1.0.conv1", "dense1.1.relu", -12, None)
    assert dense["dense1.11.conv1"] == Tap("dense1.11.conv1", "trans1.relu", -12, None)
    assert dense["trans1.conv1"] == Tap("trans1.conv1", "dense2.0.relu", 0, None)
    assert dense["dense3.11.conv1"] == Tap("dense3.11.conv1", "relu", -12, None)
    r50 = {t.conv: t.module for t in meta_layout("resnet50").taps}
    assert r50["conv1"] == "maxpool" and r50["layer1.0.conv3"] == "layer1.0.relu3"
    assert r50["layer1.0.downsample.0"] == "layer1.0.relu3"


def test_a_module_called_twice_cannot_be_tapped() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.relu(self.relu(self.conv(x)))

    with pytest.raises(ConfigError, match="module 'relu' runs more than once per forward"):
        hrank_scores(Twice(), torch.randn(2, 1, 4, 4), [Tap("conv", "relu")], n_images=2)


def test_unknown_tap_modules_are_named() -> None:
    with pytest.raises(ConfigError, match="modules the model does not have: layer9.relu"):
        hrank_scores(create("resnet20"), torch.randn(1, 3, 32, 32), [Tap("conv1", "layer9.relu")], n_images=1)


def test_other_models_fall_back_to_the_next_relu_with_a_warning() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with pytest.warns(UserWarning, match=r"no tap points for 'Sequential'.*no ReLU follows 3"):
        layout = layout_for(net)
    assert layout.fallback and layout.taps == (Tap("0", "2"), Tap("3", "3"))
    assert layout.entries == (("0",), ("3",))


# ---------------------------------------------------------------- compress_rate mapping


def test_resnet56_entries_in_mask_order() -> None:
    entries = meta_layout("resnet56").entries
    assert len(entries) == 55
    assert entries[0] == ("conv1",)
    assert entries[1] == ("layer1.0.conv1",) and entries[2] == ("layer1.0.conv2",)
    assert entries[18] == ("layer1.8.conv2",) and entries[19] == ("layer2.0.conv1",)
    assert entries[54] == ("layer3.8.conv2",)


def test_entry_counts_of_every_architecture() -> None:
    counts = {
        arch: len(meta_layout(arch).entries) for arch in ("resnet110", "vgg16_bn", "densenet40", "googlenet")
    }
    assert counts == {"resnet110": 109, "vgg16_bn": 13, "densenet40": 39, "googlenet": 10}
    assert len(meta_layout("resnet50").entries) == 53
    vgg = meta_layout("vgg16_bn").entries
    assert vgg[0] == ("features.0",) and vgg[11] == ("features.37",) and vgg[12] == ()
    dense = meta_layout("densenet40").entries
    assert (
        dense[13] == ("trans1.conv1",)
        and dense[26] == ("trans2.conv1",)
        and dense[38] == ("dense3.11.conv1",)
    )


def test_googlenet_and_resnet50_flops_script_orders() -> None:
    google = meta_layout("googlenet")
    c4 = ("c4.branch1x1.0", "c4.branch3x3.3", "c4.branch5x5.3", "c4.branch5x5.6", "c4.branch_pool.1")
    assert google.entries[5] == c4
    flops = google.entries_for("flops_script")
    assert flops[5] == () and flops[6] == c4 + google.entries[6]
    r50 = meta_layout("resnet50")
    assert r50.entries[1:5] == (
        ("layer1.0.conv1",),
        ("layer1.0.conv2",),
        ("layer1.0.conv3",),
        ("layer1.0.downsample.0",),
    )
    assert r50.entries_for("flops_script")[1:3] == (("layer1.0.downsample.0",), ("layer1.0.conv1",))


def test_wrong_length_says_how_many_entries_and_where_they_go() -> None:
    layout = meta_layout("resnet56")
    message = (
        r"has 54 entries but resnet56 needs 55.*entry 0 -> conv1; entry 1 -> layer1.0.conv1.*entry 54 -> "
    )
    with pytest.raises(ConfigError, match=message + "layer3.8.conv2"):
        compress_rates("[0.1]+[0.6]*53", layout)


def test_rates_outside_the_unit_interval_are_refused() -> None:
    layout = meta_layout("resnet56")
    with pytest.raises(ConfigError, match=r"ratio 1 is outside \[0, 1\)"):
        compress_rates("[0.1]+[1.0]*54", layout)
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\).*\[-0.1\]"):
        compress_rates([-0.1] + [0.0] * 54, layout)


def test_presets_and_uniform_rates_expand_per_conv() -> None:
    layout = meta_layout("resnet56")
    rates = conv_rates(layout, "resnet56_hrank_93.17")
    assert rates["conv1"] == 0.1 and rates["layer1.0.conv1"] == 0.6 and rates["layer2.8.conv2"] == 0.0
    assert (
        rates["layer3.0.conv1"] == 0.0 and rates["layer3.5.conv1"] == 0.1 and rates["layer3.8.conv2"] == 0.4
    )
    assert set(conv_rates(layout, "0.3").values()) == {0.3}


# ---------------------------------------------------------------- selection


def test_stable_selection_prunes_the_lowest_and_the_lower_index_among_ties() -> None:
    assert hrank_select(torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0]), 0.4) == [0, 2, 4]
    # Ties at the cut: 3 goes (rank 0), then 0 before 1 and 2 among the ones.
    assert hrank_select(torch.tensor([1.0, 1.0, 1.0, 0.0]), 0.5) == [1, 2]
    # int(0.7 * 12) = 8 pruned, 4 kept: the four highest.
    ranks = torch.tensor([5.0, 1, 9, 2, 8, 3, 7, 4, 6, 0, 10, 11])
    assert hrank_select(ranks, 0.7) == [2, 4, 10, 11]


def test_numpy_tie_break_reproduces_argsort() -> None:
    ranks = torch.tensor([2.0, 0.0, 1.0] * 10)  # 30 values, many ties: numpy's introsort is not stable here
    expected = sorted(np.argsort(ranks.numpy())[12:].tolist())
    assert hrank_select(ranks, 0.4, tie_break="numpy") == expected
    # Stable: the ten zeros (indices 1, 4, ...) go, then the ones at 2 and 5; the ones from 8 on stay.
    assert hrank_select(ranks, 0.4) == sorted([*range(0, 30, 3), *range(8, 30, 3)])
    with pytest.raises(ConfigError, match="tie_break must be 'stable' or 'numpy'"):
        hrank_select(ranks, 0.4, tie_break="quick")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the method


def test_method_plan_on_resnet20() -> None:
    model = create("resnet20")
    calib = torch.randn(4, 3, 32, 32)
    rates = "[0.0]+[0.5]*6+[0.25]*6+[0.0]*6"  # stage 1 and 2 convs, stage 3 untouched
    method = create_method("hrank", rates=rates, n_images=4)
    assert isinstance(method, HRank)
    with pytest.warns(UserWarning, match=r"pruned at their smallest: conv1 \(\+3 coupled\) at 0"):
        plan = method.plan(model, calib)
    scores = method.scores
    assert scores is not None
    # Stage 1's residual stream also carries the stem (rate 0): unpruned. Stage 2's is pruned at 0.25.
    assert "conv1" not in plan and "layer1.0.conv2" not in plan
    assert plan["layer1.0.conv1"] == hrank_select(scores["layer1.0.conv1"], 0.5)
    stage2 = sum(scores[f"layer2.{b}.conv2"] for b in range(3))
    assert plan["layer2.0.conv2"] == plan["layer2.2.conv2"] == hrank_select(stage2, 0.25)
    assert len(plan["layer2.1.conv1"]) == 24 and "layer3.0.conv1" not in plan


def test_method_options_are_checked_early() -> None:
    with pytest.raises(ConfigError, match="expected '\\+'"):
        HRankOptions(rates="[0.1]+[0.5]*3 0.2")
    with pytest.raises(ConfigError, match="must be positive"):
        HRankOptions(n_images=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HRankOptions(rates="resnet56_hrank_93.17")  # presets are names, not expressions
