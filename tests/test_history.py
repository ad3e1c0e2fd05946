"""Edit history: pruned, decomposed and masked models round-trip through one file with identical outputs;
histories that are unknown, malformed or do not fit their architecture are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import prunekit
from prunekit import model_file as checkpoint
from prunekit.errors import CheckpointError
from prunekit.models import create
from prunekit.surgery import LowRankConv2d, MaskSet, apply, decompose
from prunekit.surgery.history import (
    ChannelEdit,
    LowRankEdit,
    MaskEdit,
    parse,
    record,
    record_masks,
    replay,
)


def randomized(model: nn.Module) -> nn.Module:
    """Non-default BN statistics and affine terms, so a lost or misplaced channel changes the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def all_but(width: int, *removed: int) -> list[int]:
    return [i for i in range(width) if i not in removed]


def round_trip(edited: nn.Module, path: Path, x: torch.Tensor, base: nn.Module | None = None) -> nn.Module:
    """Save, load, and check the loaded model computes exactly what `edited` computes."""
    checkpoint.save(edited, path)
    loaded = prunekit.load(path, model=base).eval()
    with torch.no_grad():
        assert torch.equal(edited.eval()(x), loaded(x))
    assert loaded.prunekit_edits == edited.prunekit_edits
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in edited.named_parameters()]
    return loaded


# --- recording ------------------------------------------------------------------------------------


def test_apply_and_decompose_record_on_the_copy_only() -> None:
    base = create("lenet5")
    pruned = apply(base, {"conv1": [0, 2, 4], "fc1": list(range(100))}, torch.zeros(2, 1, 28, 28))
    assert not hasattr(base, "prunekit_edits")
    assert pruned.prunekit_edits == [
        {
            "kind": "channels",
            "plan": {"conv1": [0, 2, 4], "fc1": list(range(100))},
            "input_shape": [1, 28, 28],
        }
    ]
    low = decompose(pruned, {"conv2": ("VH", 3)})
    assert low.prunekit_edits[1] == {"kind": "lowrank", "plan": {"conv2": ["VH", 3]}}
    assert len(pruned.prunekit_edits) == 1  # the deep copy took its own list
    assert copy.deepcopy(low).prunekit_edits == low.prunekit_edits


def test_user_models_get_a_history_too() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    record(model, MaskEdit(("0.weight",)))
    assert model.prunekit_edits == [{"kind": "masks", "params": ["0.weight"]}]


@pytest.mark.parametrize(
    "edit",
    [
        ChannelEdit({"a.b": [0, 3]}, (3, 8, 8)),
        LowRankEdit({"conv": ("NC", 2), "x.y": ("VH", 5)}),
        MaskEdit(("fc.weight", "fc.bias")),
    ],
)
def test_edits_survive_json(edit: ChannelEdit | LowRankEdit | MaskEdit) -> None:
    assert parse(json.loads(json.dumps([edit.to_json()]))) == [edit]


# --- round trips ----------------------------------------------------------------------------------


def test_resnet20_channels_including_stages_through_the_option_a_shortcut(tmp_path: Path) -> None:
    model = randomized(create("resnet20"))
    plan = {
        "conv1": all_but(16, 3, 9),  # stage 1: stem and every layer1 residual branch
        "layer2.1.conv2": all_but(32, 0, 11),  # stage 2, both sides of the zero-pad shortcut
        "layer3.0.conv1": list(range(0, 64, 2)),  # inside a block
    }
    pruned = apply(model, plan, torch.zeros(1, 3, 32, 32))
    loaded = round_trip(pruned, tmp_path / "r20.safetensors", torch.randn(2, 3, 32, 32))
    assert loaded.layer2[0].shortcut.out_channels == 30 and loaded.layer3[0].conv1.out_channels == 32
    assert torch.equal(loaded.layer2[0].shortcut.dst, pruned.layer2[0].shortcut.dst)
    assert checkpoint.read_metadata(tmp_path / "r20.safetensors")["edits"] == pruned.prunekit_edits


def test_vgg16_bn_pruned(tmp_path: Path) -> None:
    model = randomized(create("vgg16_bn"))
    pruned = apply(model, {"features.7": all_but(128, 5, 77), "classifier.linear1": list(range(0, 512, 3))},
                   torch.zeros(1, 3, 32, 32))  # fmt: skip
    loaded = round_trip(pruned, tmp_path / "vgg.safetensors", torch.randn(2, 3, 32, 32))
    assert loaded.features[7].out_channels == 126 and loaded.classifier.linear1.out_features == 171


def test_pruned_twice_replays_both_edits_in_order(tmp_path: Path) -> None:
    x = torch.randn(2, 1, 28, 28)
    once = apply(create("lenet5"), {"conv2": list(range(0, 50, 2))}, x)
    # indices of the second plan refer to the 25-channel conv2 of the first result
    twice = apply(once, {"conv2": [0, 1, 24], "fc1": list(range(10))}, x)
    loaded = round_trip(twice, tmp_path / "twice.safetensors", x)
    assert [e["plan"] for e in loaded.prunekit_edits] == [
        {"conv2": list(range(0, 50, 2))},
        {"conv2": [0, 1, 24], "fc1": list(range(10))},
    ]
    assert (loaded.conv2.out_channels, loaded.fc1.in_features, loaded.fc1.out_features) == (3, 48, 10)


def test_decomposed_nc_and_vh(tmp_path: Path) -> None:
    model = randomized(create("resnet20"))
    low = decompose(model, {"layer1.0.conv1": ("NC", 4), "layer2.1.conv2": ("VH", 6)})
    loaded = round_trip(low, tmp_path / "low.safetensors", torch.randn(2, 3, 32, 32))
    first, second = loaded.layer1[0].conv1, loaded.layer2[1].conv2
    assert isinstance(first, LowRankConv2d) and (first.scheme, first.rank) == ("NC", 4)
    assert isinstance(second, LowRankConv2d) and (second.scheme, second.rank) == ("VH", 6)
    assert second.first.kernel_size == (3, 1) and second.second.kernel_size == (1, 3)


def test_pruned_then_decomposed(tmp_path: Path) -> None:
    pruned = apply(
        randomized(create("resnet20")), {"layer1.2.conv1": [1, 5, 6, 10]}, torch.zeros(1, 3, 32, 32)
    )
    # the pruned conv2 now reads 4 channels: NC full rank is min(16, 4·9) = 16; rank 3 is a real cut
    low = decompose(pruned, {"layer1.2.conv2": ("NC", 3), "layer1.2.conv1": ("VH", 2)})
    loaded = round_trip(low, tmp_path / "pd.safetensors", torch.randn(2, 3, 32, 32))
    assert [e["kind"] for e in loaded.prunekit_edits] == ["channels", "lowrank"]
    assert loaded.layer1[2].conv2.first.in_channels == 4


def test_masked_model_keeps_its_masks(tmp_path: Path) -> None:
    model = create("lenet5")
    masks = MaskSet.from_threshold(model, 0.05, params=["conv2.weight", "fc1.weight"])
    record_masks(model, masks)
    assert model.prunekit_edits == [{"kind": "masks", "params": ["conv2.weight", "fc1.weight"]}]
    assert float(model.fc1.weight.detach()[~masks["fc1.weight"]].abs().sum()) == 0.0  # folded
    loaded = round_trip(model, tmp_path / "masked.safetensors", torch.randn(2, 1, 28, 28))
    assert list(loaded.prunekit_masks) == ["conv2.weight", "fc1.weight"]
    for name, mask in masks.items():
        assert torch.equal(loaded.prunekit_masks[name], mask)


def test_masks_follow_later_surgery(tmp_path: Path) -> None:
    model = create("lenet5")
    record_masks(model, MaskSet.from_threshold(model, 0.05, params=["conv2.weight", "fc2.weight"]))
    fc2_mask = model.prunekit_masks["fc2.weight"]
    with torch.no_grad():
        model.conv2.weight[3].fill_(0.5)  # a kept filter
    pruned = apply(model, {"conv1": list(range(10))}, torch.zeros(1, 1, 28, 28))
    # fc2 did not change shape: its mask is kept exactly; conv2 lost input channels: its surviving zeros
    assert torch.equal(pruned.prunekit_masks["fc2.weight"], fc2_mask)
    assert torch.equal(pruned.prunekit_masks["conv2.weight"], pruned.conv2.weight != 0)
    assert bool(pruned.prunekit_masks["conv2.weight"][3].all())
    low = decompose(pruned, {"conv2": ("NC", 5)})
    assert list(low.prunekit_masks) == ["fc2.weight"]  # conv2.weight no longer exists
    loaded = round_trip(low, tmp_path / "mpl.safetensors", torch.randn(2, 1, 28, 28))
    assert [e["kind"] for e in loaded.prunekit_edits] == ["masks", "channels", "lowrank"]
    assert torch.equal(loaded.prunekit_masks["fc2.weight"], fc2_mask)


class CatNet(nn.Module):
    """A user model with a concatenation: both branches' channels reach the head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.mix = nn.Conv2d(10, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.head(torch.relu(self.mix(y)).mean((2, 3)))


def test_user_model_round_trips_on_a_supplied_base(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = CatNet()
    pruned = apply(base, {"a": [0, 2, 5], "b": [1, 3]}, torch.zeros(1, 3, 12, 12))
    low = decompose(pruned, {"mix": ("NC", 4)})
    path = tmp_path / "user.safetensors"
    loaded = round_trip(low, path, torch.randn(2, 3, 12, 12), base=CatNet())
    assert loaded.mix.first.in_channels == 5
    assert checkpoint.read_metadata(path)["arch"] is None
    with pytest.raises(CheckpointError, match=r"user model .* model=MyNet"):
        prunekit.load(path)
    with pytest.raises(CheckpointError, match="already carries 2 edits"):
        prunekit.load(path, model=low)


# --- refusals -------------------------------------------------------------------------------------


def saved_with_edits(tmp_path: Path, edits: list) -> Path:
    model = create("lenet5")
    model.prunekit_edits = edits
    return checkpoint.save(model, tmp_path / "edited.safetensors")


def test_unknown_edit_kind_is_refused(tmp_path: Path) -> None:
    path = saved_with_edits(tmp_path, [{"kind": "quantize", "bits": 4}])
    with pytest.raises(
        CheckpointError, match=r"edit 0 has unknown kind 'quantize'; known kinds: channels, lowrank, masks"
    ):
        prunekit.load(path)
    with pytest.raises(CheckpointError, match="edit 1 has a str"):
        parse([{"kind": "masks", "params": []}, "channels"])


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"kind": "channels", "plan": {"conv1": [0, 1]}}, r"edit 0 \(channels\) is malformed: 'input_shape'"),
        (
            {"kind": "channels", "plan": {"conv1": "01"}, "input_shape": [1, 28, 28]},
            "kept channels of layer 'conv1'",
        ),
        ({"kind": "channels", "plan": {"conv1": [True]}, "input_shape": [1, 28, 28]}, "list of ints"),
        (
            {"kind": "lowrank", "plan": {"conv2": ["NC"]}},
            r"edit 0 \(lowrank\) is malformed: .* \[scheme, rank\]",
        ),
        ({"kind": "lowrank", "plan": [["conv2", "NC", 2]]}, "'plan' must be an object keyed by layer name"),
        ({"kind": "masks", "params": "fc1.weight"}, r"edit 0 \(masks\) is malformed"),
    ],
)
def test_malformed_edits_are_refused_with_their_position(tmp_path: Path, edit: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        prunekit.load(saved_with_edits(tmp_path, [edit]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            {"kind": "channels", "plan": {"nope": [0]}, "input_shape": [1, 28, 28]},
            "no Conv2d or Linear layer named 'nope'",
        ),
        (
            {"kind": "channels", "plan": {"conv1": [0, 99]}, "input_shape": [1, 28, 28]},
            r"conv1' has 20 output channels",
        ),
        (
            {"kind": "channels", "plan": {"conv1": [0]}, "input_shape": [3, 28, 28]},
            r"does not run on an input of shape \(3, 28, 28\)",
        ),
        ({"kind": "lowrank", "plan": {"conv9": ["NC", 2]}}, "no layer named 'conv9'"),
        ({"kind": "lowrank", "plan": {"conv2": ["NC", 999]}}, "rank 999 for layer 'conv2'"),
        ({"kind": "lowrank", "plan": {"conv2": ["XY", 2]}}, "unknown low-rank scheme 'XY'"),
        ({"kind": "masks", "params": ["fc9.weight"]}, r"masked parameters \['fc9.weight'\]"),
    ],
)
def test_edits_that_do_not_fit_the_architecture_are_refused(tmp_path: Path, edit: dict, message: str) -> None:
    path = saved_with_edits(tmp_path, [{"kind": "masks", "params": ["fc1.weight"]}, edit])
    with pytest.raises(
        CheckpointError, match=rf"edits do not fit its architecture: edit 1 \({edit['kind']}\): .*{message}"
    ):
        prunekit.load(path)


def test_tensors_that_do_not_match_the_edits_are_refused(tmp_path: Path) -> None:
    pruned = apply(create("lenet5"), {"conv1": [0, 1, 2]}, torch.zeros(1, 1, 28, 28))
    pruned.prunekit_edits = [ChannelEdit({"conv1": [0, 1, 2, 3]}, (1, 28, 28)).to_json()]
    path = checkpoint.save(pruned, tmp_path / "lying.safetensors")
    with pytest.raises(
        CheckpointError, match=r"(?s)do not match .*conv1.weight.*torch.Size\(\[3, 1, 5, 5\]\)"
    ):
        prunekit.load(path)


def rewritten(path: Path, extra: dict[str, torch.Tensor]) -> Path:
    """The file at `path` with `extra` tensors added (same metadata)."""
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        meta = f.metadata()
    out = path.with_name("rewritten.safetensors")
    save_file({**tensors, **extra}, str(out), metadata=meta)
    return out


def test_masks_for_unknown_or_misshapen_params_are_refused(tmp_path: Path) -> None:
    path = checkpoint.save(create("lenet5"), tmp_path / "m.safetensors")
    ghost = rewritten(path, {"__prunekit_mask__.fc9.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match="mask for 'fc9.weight', which is not a parameter"):
        prunekit.load(ghost)
    wrong = rewritten(path, {"__prunekit_mask__.fc2.weight": torch.ones(10, 5, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match=r"mask for 'fc2.weight' is torch.bool \(10, 5\).*\(10, 500\)"):
        prunekit.load(wrong)
    model = create("lenet5")
    model.prunekit_masks = MaskSet({"fc2.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(
        CheckpointError, match=r"mask for 'fc2.weight' has shape \(3,\) but the model has \(10, 500\)"
    ):
        checkpoint.save(model, tmp_path / "bad.safetensors")


def test_replay_refuses_a_base_that_was_already_edited() -> None:
    edited = apply(create("lenet5"), {"conv1": [0]}, torch.zeros(1, 1, 28, 28))
    with pytest.raises(CheckpointError, match="base model already carries 1 edits"):
        replay(edited, edited.prunekit_edits)
