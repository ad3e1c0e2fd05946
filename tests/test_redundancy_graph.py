"""Redundancy-graph decomposition (specs/redundancy_graph.md): hashes of hand-made maps, float64 similarity
and ties, the method's options and errors, coupled channels on ResNet-56 and DenseNet-40, the shared
calibration pass, and the CLI on synthetic and real Fashion-MNIST data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.cli import main
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import create_method
from prunekit.methods.feature_pass import feature_pass
from prunekit.methods.redundancy_graph import (
    HammingAccumulator,
    edges,
    kcore_collapse,
    phash,
    similarity,
)
from prunekit.models import create, feature_taps

# ---------------------------------------------------------------- hashes


def one_map(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, 1, *x.shape)


def test_degenerate_maps_hash_as_the_spec_says() -> None:
    dc_only = torch.zeros(8, 8, dtype=torch.bool)
    dc_only[0, 0] = True
    assert torch.equal(phash(one_map(torch.full((8, 8), 0.3)))[0, 0], dc_only)  # constant c > 0
    assert bool(phash(one_map(torch.zeros(8, 8))).all())  # all zero: every coefficient equals the mean 0
    assert torch.equal(phash(one_map(torch.full((8, 8), -2.0)))[0, 0], ~dc_only)  # c < 0: all but DC


def test_checkerboards_hash_to_hand_computed_bits() -> None:
    # 2×2: C₂ = [[2, 2], [√2, −√2]]; X = [[1, −1], [−1, 1]] gives D = a aᵀ with a = C₂·(1, −1) = (0, 2√2),
    # so D = [[0, 0], [0, 8]], mean 2: only the (1, 1) bit.
    board2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert phash(one_map(board2))[0, 0].tolist() == [[False, False], [False, True]]
    # 4×4: a_k = Σₙ (−1)ⁿ 2cos(πk(2n+1)/8) = (0, 4(cos π/8 − cos 3π/8), 0, 4(cos π/8 + cos 3π/8))
    # = (0, 2.165, 0, 5.226); D = a aᵀ, mean (Σa)²/16 = 3.414: bits where both indices are odd.
    board4 = torch.tensor([[(-1.0) ** (i + j) for j in range(4)] for i in range(4)])
    a1 = 4 * (math.cos(math.pi / 8) - math.cos(3 * math.pi / 8))
    assert a1 * a1 > (a1 + 4 * (math.cos(math.pi / 8) + math.cos(3 * math.pi / 8))) ** 2 / 16
    odd = [False, True, False, True]
    expected = [[row and col for col in odd] for row in odd]
    assert phash(one_map(board4))[0, 0].tolist() == expected


def test_hash_size_follows_the_smaller_side_and_positive_scaling_keeps_bits() -> None:
    maps = torch.randn(3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    assert phash(maps).shape == (3, 5, 8, 8)
    assert phash(torch.randn(2, 4, 6, 10)).shape == (2, 4, 6, 6)  # non-square: K = min(8, H, W)
    assert phash(torch.randn(1, 2, 4, 4)).shape == (1, 2, 4, 4)
    assert torch.equal(phash(maps), phash(maps * 7.5))
    with pytest.raises(ConfigError, match=r"must be \(B, C, H, W\)"):
        phash(torch.randn(4, 4))


# ---------------------------------------------------------------- similarity and edges


def test_identical_and_complementary_maps() -> None:
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sim = similarity(phash(torch.cat([x, x, -x], dim=1)))
    assert sim.dtype == torch.float64
    assert sim[0, 1] == 1.0  # identical maps
    assert sim[0, 2] == 0.0  # −X flips every coefficient and the mean: every bit differs
    assert torch.equal(sim, sim.T) and bool((sim.diagonal() == 1).all())


def test_similarity_is_one_minus_mean_hamming_over_k_squared() -> None:
    bits = torch.zeros(2, 3, 2, 2, dtype=torch.bool)  # 2 images, 3 filters, 4-bit hashes
    bits[0, 1, 0, 0] = True  # image 0: filters 0 and 1 differ in 1 bit
    bits[1, 1] = True  # image 1: in all 4
    bits[:, 2, 1, 1] = True  # filter 2 differs from 0 in 1 bit on each image
    sim = similarity(bits)
    assert sim[0, 1] == 1 - 5 / 8 and sim[0, 2] == 1 - 2 / 8
    assert sim[1, 2] == 1 - (2 + 3) / 8


def tie_bits(distance: int, images: int = 100) -> torch.Tensor:
    """Two filters whose 8×8 hashes differ in `distance` bits in total over `images` images."""
    bits = torch.zeros(images, 2, 64, dtype=torch.bool)
    per_image, extra = divmod(distance, images)
    bits[:, 1, :per_image] = True
    bits[:extra, 1, per_image] = True
    return bits.view(images, 2, 8, 8)


@pytest.mark.parametrize("tau", [0.65, 0.7, 0.75, 0.8])
def test_a_tie_at_exactly_tau_is_an_edge(tau: float) -> None:
    distance = round((1 - tau) * 6400)  # 100 images × 64 bits
    assert not edges(similarity(tie_bits(distance + 1)), tau)[0, 1]
    assert edges(similarity(tie_bits(distance)), tau)[0, 1]
    # The same tie averaged image by image in float32 falls just below τ = 0.7: the edge the spec warns
    # float32 code drops.
    per_image = 1 - tie_bits(1920).view(100, 2, 64).ne(False).sum(-1)[:, 1].float() / 64
    assert per_image.mean().item() < 0.7


def test_hamming_accumulated_batch_by_batch_equals_one_shot() -> None:
    bits = phash(torch.randn(10, 6, 8, 8, generator=torch.Generator().manual_seed(2)))
    acc = HammingAccumulator()
    for chunk in bits.split(3):
        acc.add(chunk)
    assert torch.equal(acc.similarity(), similarity(bits))
    with pytest.raises(ConfigError, match="hash size changed"):
        acc.add(bits[:, :, :4, :4])


@pytest.mark.parametrize("tau", [0.0, -0.5, 1.01])
def test_tau_outside_zero_one_is_refused(tau: float) -> None:
    with pytest.raises(ConfigError, match=r"tau must be in \(0, 1\].*connect every pair"):
        edges(torch.eye(2, dtype=torch.float64), tau)
    with pytest.raises(ConfigError, match=r"tau must be in \(0, 1\]"):
        create_method("redundancy_graph", tau=tau)


def test_bad_layer_tau_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be GLOB:TAU"):
        create_method("redundancy_graph", layer_tau="layer3.*")
    with pytest.raises(ConfigError, match="'x' is not a number"):
        create_method("redundancy_graph", layer_tau="conv1:x")
    with pytest.raises(ConfigError, match=r"layer_tau for 'conv1' must be in \(0, 1\]"):
        create_method("redundancy_graph", layer_tau="conv1:0")
    with pytest.raises(ConfigError, match="takes no per-layer ratios"):
        create_method("redundancy_graph", selection="conv1:0.5")


# ---------------------------------------------------------------- the method on models


def calib(n: int = 16, shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def test_resnet56_coupled_stages_follow_their_first_conv() -> None:
    model = create("resnet56").eval()
    x = calib()
    method = create_method("redundancy_graph", tau=0.6, n_images=16)
    groups, layers = method.evidence(model, x)
    assert len(groups) == 30  # 27 conv1s, the stem's stage and the two later stages
    plan = method.plan(model, x)
    stem = kcore_collapse(edges(layers["conv1"].similarity, 0.6), layers["conv1"].l1).kept
    for name in ["conv1"] + [f"layer1.{b}.conv2" for b in range(9)]:
        assert plan[name] == stem  # stage 1 keeps the stem's set (spec §3.1)
    stage2 = kcore_collapse(edges(layers["layer2.0.conv2"].similarity, 0.6), layers["layer2.0.conv2"].l1)
    assert len(stage2.kept) < 32
    assert all(plan[f"layer2.{b}.conv2"] == stage2.kept for b in range(9))
    assert "layer2.1.conv2" not in layers  # coupled members get no graph of their own
    assert layers["conv1"].images == 16 and layers["conv1"].bits == 64
    assert layers["layer3.0.conv1"].bits == 64  # 8×8 maps still give 64-bit hashes
    # L1 importance: Σ|w| per filter, bias excluded.
    assert torch.allclose(layers["conv1"].l1, model.conv1.weight.detach().abs().sum((1, 2, 3)).double())
    pruned = prunekit.prune(model, x[:1], method="redundancy_graph", calib=x, n_images=16, tau=0.6)
    assert pruned.conv1.out_channels == len(stem) == pruned.layer1[8].conv2.out_channels
    assert pruned.layer2[0].conv1.in_channels == len(stem)
    assert pruned.fc.in_features == pruned.layer3[0].conv2.out_channels
    assert pruned(x).shape == (16, 10)


def test_densenet40_concatenations_carry_each_layers_kept_set() -> None:
    model = create("densenet40").eval()
    x = calib(8)
    method = create_method("redundancy_graph", tau=0.6, n_images=8)
    groups, _ = method.evidence(model, x)
    assert len(groups) == 39 and all(len(g.members) == 1 for g in groups)  # every conv its own graph
    plan = method.plan(model, x)
    pruned = prunekit.prune(model, x[:1], method="redundancy_graph", calib=x, n_images=8, tau=0.6)
    width = {name: len(kept) for name, kept in plan.items()}
    original = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    width = {n: width.get(n, original[n]) for n in original}
    # The spec's running in_set: stem (or transition) width, then + each dense layer's kept filters.
    in_set = width["conv1"]
    for block, trans in (("dense1", "trans1"), ("dense2", "trans2"), ("dense3", None)):
        for i in range(12):
            assert pruned.get_submodule(f"{block}.{i}.conv1").in_channels == in_set
            in_set += width[f"{block}.{i}.conv1"]
        if trans:
            assert pruned.get_submodule(f"{trans}.conv1").in_channels == in_set
            in_set = width[f"{trans}.conv1"]
    assert pruned.fc.in_features == pruned.bn.num_features == in_set
    assert in_set < 456  # something went
    assert pruned(x).shape == (8, 10)


def test_batch_statistics_leave_the_model_unchanged_and_differ_from_eval() -> None:
    model = create("resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = calib(8)
    batch = create_method("redundancy_graph", n_images=8).evidence(model, x)[1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not model.bn1.training
    evalmode = create_method("redundancy_graph", n_images=8, batchnorm="eval").evidence(model, x)[1]
    assert torch.equal(batch["conv1"].similarity, evalmode["conv1"].similarity)  # before any BN
    assert not torch.equal(batch["layer1.0.conv1"].similarity, evalmode["layer1.0.conv1"].similarity)


class ShortcutFirst(nn.Module):
    """Registers `a` before `b` but runs `b` first, as the original's ResNet blocks run the shortcut conv
    before conv1 (spec §3.2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b(x)
        a = self.a(x)
        return self.fc(torch.cat([a, b], 1).mean((2, 3)))


def test_maps_go_to_their_own_conv_unless_legacy_hook_order_is_asked() -> None:
    model, x = ShortcutFirst(), calib(8)
    own = create_method("redundancy_graph", n_images=8).evidence(model, x)[1]
    legacy = create_method("redundancy_graph", n_images=8, legacy_hook_order=True).evidence(model, x)[1]
    assert torch.equal(legacy["a"].similarity, own["b"].similarity)  # the k-th call ↔ k-th registered
    assert torch.equal(legacy["b"].similarity, own["a"].similarity)
    assert torch.equal(legacy["a"].l1, own["a"].l1)  # L1 norms still from the conv itself
    with pytest.raises(ConfigError, match="run in registration order, so it would change nothing"):
        create_method("redundancy_graph", legacy_hook_order=True).evidence(create("resnet20"), calib(2))


def test_per_layer_tau_overrides_and_coupled_conflicts() -> None:
    model, x = create("resnet20").eval(), calib(8)
    base = create_method("redundancy_graph", tau=0.6, n_images=8)
    kept = {n: len(k) for n, k in base.plan(model, x).items()}
    assert kept["layer3.0.conv1"] < 64
    only_dead = create_method("redundancy_graph", tau=0.6, n_images=8, layer_tau="layer3.*:1.0")
    plan = only_dead.plan(model, x)
    assert "layer3.0.conv1" not in plan or len(plan["layer3.0.conv1"]) > kept["layer3.0.conv1"]
    assert {n: len(k) for n, k in plan.items() if not n.startswith("layer3")} == {
        n: k for n, k in kept.items() if not n.startswith("layer3")
    }
    with pytest.raises(ConfigError, match="'layer9.*' matches no prunable layer; they are named like: conv1"):
        create_method("redundancy_graph", layer_tau="layer9.*:0.8", n_images=8).plan(model, x)
    clash = create_method("redundancy_graph", layer_tau="conv1:0.8,layer1.0.conv2:0.9", n_images=8)
    with pytest.raises(ConfigError, match="share their output channels.*conv1:0.8, layer1.0.conv2:0.9"):
        clash.plan(model, x)


def test_an_unreachable_budget_names_the_closest_reachable_fraction() -> None:
    # (The budget itself is met on ResNet-20 by tests/test_method_conformance.py.) Here no tau can remove
    # 99.95 % of the MACs: every layer keeps at least one filter per component.
    model, x = ShortcutFirst().eval(), calib(8, (3, 8, 8))
    with pytest.raises(PrunekitError, match="closest reachable fractions are"):
        prunekit.prune(model, x[:1], method="redundancy_graph", calib=x, n_images=8, target_macs=0.0005)


def test_feature_pass_reduces_each_slice_once_per_batch_with_limited_images() -> None:
    model = create("resnet20").eval()
    seen: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
    taps = [t for t in feature_taps(model, "conv") if t.conv in ("conv1", "layer3.2.conv2")]
    result = feature_pass(
        model, calib(10), taps, lambda convs, maps: seen.append((convs, tuple(maps.shape))),
        n_images=7, batch_size=4,
    )  # fmt: skip
    assert result.images == 7 and result.fired == ("conv1", "layer3.2.conv2")
    assert seen == [
        (("conv1",), (4, 16, 32, 32)), (("layer3.2.conv2",), (4, 64, 8, 8)),
        (("conv1",), (3, 16, 32, 32)), (("layer3.2.conv2",), (3, 64, 8, 8)),
    ]  # fmt: skip


# ---------------------------------------------------------------- end to end


def test_cli_on_synthetic_data_records_tau_graphs_and_per_layer_macs(tmp_path, capsys) -> None:
    data = ["--data", "synthetic", "--data-option", "shape=3x8x8", "--data-option", "num_samples=64"]
    data += ["--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--device", "cpu"]
    assert main(["train", "--arch", "resnet20", *data, "--epochs", "1", "--out", str(tmp_path / "d")]) == 0
    argv = ["prune", str(tmp_path / "d" / "model.safetensors"), "--method", "redundancy_graph"]
    argv += ["--target-macs", "0.6", "--option", "n_images=48"]
    assert main([*argv, *data, "--finetune-epochs", "1", "--out", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    details = summary["redundancy_graph"]
    assert details["images"] == 48
    assert abs(summary["pruned"]["macs"] / summary["dense"]["macs"] - 0.6) <= 0.012
    assert summary["budget"]["knob"] == "1-tau"
    assert details["tau"] == pytest.approx(1 - summary["budget"]["ratio"])
    assert details["graphs"]["conv1"]["coupled"] == [f"layer1.{b}.conv2" for b in range(3)]
    assert sum(details["macs_per_layer"].values()) == summary["pruned"]["macs"]
    assert summary["widths_after"]["conv1"] == details["graphs"]["conv1"]["kept"]
    capsys.readouterr()
    assert main([*argv[:4], "--option", "tau=0", *data, "--out", str(tmp_path / "bad")]) == 2
    assert "tau must be in (0, 1]" in capsys.readouterr().err


def test_cli_on_real_fashion_mnist(tmp_path, shared_data, capsys) -> None:
    data = ["--data", "fashion_mnist", "--data-root", str(shared_data), "--limit-train", "1024"]
    data += ["--limit-test", "512", "--batch-size", "128", "--device", "cpu"]
    assert main(["train", "--arch", "lenet5", *data, "--epochs", "1", "--out", str(tmp_path / "d")]) == 0
    argv = ["prune", str(tmp_path / "d" / "model.safetensors"), "--method", "redundancy_graph"]
    argv += ["--option", "tau=0.75", *data, "--finetune-epochs", "1", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    graphs = summary["redundancy_graph"]["graphs"]
    assert summary["redundancy_graph"]["images"] == 100
    assert graphs["conv1"]["kept"] == summary["widths_after"]["conv1"] < summary["widths_before"]["conv1"]
    assert summary["pruned"]["top1"] > 50  # fine-tuned on real Fashion-MNIST
    capsys.readouterr()
