"""A residual branch removed whole (depth): the surgery empties it exactly, the model file, the deployed
form and ONNX carry it, a chain is refused, and `round_to=auto` at a MAC budget removes branches where the
latency table says narrow convs cost more time than their MACs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from prunekit import model_file
from prunekit.errors import SurgeryError
from prunekit.measure import cost, deploy
from prunekit.models import create
from prunekit.models.empty_layers import EmptyBatchNorm2d, EmptyConv2d
from prunekit.surgery import apply

# ResNet-20's stage-1 block conv: 16 -> 16, 3x3, at 32x32.
BLOCK_CONV_MACS = 16 * 16 * 9 * 32 * 32


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    with torch.no_grad():  # BN statistics away from identity, so the branch's constant is not zero
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model


def test_an_emptied_branch_is_exact_and_costs_nothing() -> None:
    model, x = _resnet20(), torch.randn(2, 3, 32, 32)
    pruned = apply(model, {"layer1.1.conv1": []}, x).eval()  # apply also proves it equals masking
    block = pruned.layer1[1]
    assert type(block.conv1) is EmptyConv2d and block.conv1.out_channels == 0
    assert type(block.bn1) is EmptyBatchNorm2d
    assert type(block.conv2) is EmptyConv2d and block.conv2.in_channels == 0
    # by hand: the block computes relu(bn2(0) + x), bn2(0) = beta - gamma * mean / sqrt(var + eps)
    bn2 = model.layer1[1].bn2
    constant = bn2.bias - bn2.weight * bn2.running_mean / torch.sqrt(bn2.running_var + bn2.eps)
    with torch.no_grad():
        inner = model.layer1[0](torch.relu(model.bn1(model.conv1(x))))
        expected = torch.relu(inner + constant.view(1, -1, 1, 1))
        torch.testing.assert_close(block(inner), expected)
        masked = copy.deepcopy(model)
        for name in ("weight", "bias"):
            getattr(masked.layer1[1].bn1, name).zero_()
        masked.layer1[1].conv1.weight.zero_()
        torch.testing.assert_close(pruned(x), masked(x), rtol=0, atol=1e-5)
    assert cost(model, (3, 32, 32)).macs - cost(pruned, (3, 32, 32)).macs == 2 * BLOCK_CONV_MACS


def test_an_emptied_branch_saves_deploys_and_exports(tmp_path) -> None:
    model, x = _resnet20(), torch.randn(2, 3, 32, 32)
    pruned = apply(model, {"layer2.2.conv1": [], "layer3.0.conv1": list(range(20))}, x).eval()
    model_file.save(pruned, tmp_path / "m.safetensors")
    again = model_file.load(tmp_path / "m.safetensors").eval()
    assert type(again.layer2[2].conv1) is EmptyConv2d  # the edit history replays the emptying
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)
        deployed = deploy(pruned, x)  # BN folded: bn2's shift becomes the empty conv's bias
        torch.testing.assert_close(deployed(x), pruned(x), rtol=1e-4, atol=1e-4)
    pytest.importorskip("onnxruntime")
    from prunekit.export import export_onnx

    report = export_onnx(pruned, x, tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-3


def test_emptying_a_chain_is_refused() -> None:
    model, x = create("lenet5").eval(), torch.randn(2, 1, 28, 28)
    # LeNet-5's max-pool cannot run on a map with no channels: refused, naming the line
    with pytest.raises(
        SurgeryError, match=r"every channel of 'conv1' leaves an operation with no channels.*lenet"
    ):
        apply(model, {"conv1": []}, x)
    # the residual stream of a stage is not a branch either: everything after it would be constant
    with pytest.raises(SurgeryError, match=r"independent of its input"):
        apply(create("resnet20").eval(), {"conv1": []}, torch.randn(2, 3, 32, 32))


def _fixed_cost_per_conv(shape: object, batch: int, threads: int, device: str) -> float:
    """A fake table: every conv costs 50 µs before its MACs (per-call overhead, as at batch 1 on a CPU)."""
    return shape.macs() / 1e5 + (5 if shape.is_linear else 50)  # type: ignore[attr-defined]


def test_auto_removes_branches_where_convs_cost_more_than_their_macs(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prunekit.measure import latency_table
    from prunekit.methods import latency_budget
    from prunekit.methods.budget import MacCounter, meet_budget
    from prunekit.methods.selection import EMPTY, Budget

    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(latency_budget, "_TABLES", {})
    monkeypatch.setattr(latency_table, "time_layer", _fixed_cost_per_conv)
    model, x = create("resnet20").eval(), torch.randn(2, 3, 32, 32)
    counter = MacCounter(model, x)
    base = {name: 1.0 for group in counter.groups for name in group}
    budget = Budget("target_macs", 0.3)
    plain = meet_budget(model, x, budget, base, round_to=8)
    widths_only = meet_budget(model, x, budget, base, round_to=8, fastest=True)  # round_to=auto
    assert not any(ratio == EMPTY for ratio in widths_only.ratios.values())  # depth is asked for, not implied
    fast = meet_budget(model, x, budget, base, round_to=8, fastest=True, depth=True)  # round_to=auto+depth
    emptied = sorted(name for name, ratio in fast.ratios.items() if ratio == EMPTY)
    assert emptied and not any(ratio == EMPTY for ratio in plain.ratios.values())
    # every emptied block saves its two convs' 50 µs; the table predicts the fast answer that much faster
    table = latency_budget.table_for(budget)

    def predicted(ratios: dict[str, float]) -> float:
        small = apply(
            model,
            counter.plan(ratios),
            x,
        )
        return sum(table.lookup_many(latency_budget.layer_shapes(small, x).values()))

    assert predicted(plain.ratios) - predicted(fast.ratios) >= 2 * 50 * len(emptied) - 1
    # only block-internal convs (conv1 of a block) go whole, and the budget still holds, counted for real
    assert all(name.endswith(".conv1") and name.startswith("layer") for name in emptied)
    assert abs(fast.reached_fraction - 0.3) <= 0.02 * 0.3
    assert counter.real(fast.ratios) == fast.pruned_macs
    # a plan at those ratios removes the emptied blocks' convs, exactly (apply checks)
    small = apply(model, counter.plan(fast.ratios), x)
    assert all(type(small.get_submodule(name)) is EmptyConv2d for name in emptied)
    assert cost(small, (3, 32, 32)).macs == fast.pruned_macs


@pytest.mark.parametrize(
    "geometry",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": (3, 5), "stride": (2, 1), "padding": (2, 1), "dilation": (2, 1)},
        {"kernel_size": 3, "padding": "same", "dilation": 2},
        {"kernel_size": 3, "padding": "valid"},
        {"kernel_size": 1, "stride": 2},
    ],
)
def test_an_empty_conv_has_the_conv_output_size(geometry: dict) -> None:
    x = torch.randn(2, 3, 11, 9)
    for cin, cout in ((3, 0), (0, 4)):
        conv = nn.Conv2d(3, max(cout, 1), **geometry)
        expected = conv(x).shape[-2:]
        empty = nn.Conv2d(max(cin, 1), max(cout, 1), **geometry)
        empty.in_channels, empty.out_channels = cin, cout  # the shapes a cut leaves
        empty.__class__ = EmptyConv2d
        out = empty(x[:, :cin])
        assert tuple(out.shape) == (2, cout, *expected)
        if cout:  # no input channel: the bias everywhere
            torch.testing.assert_close(out, empty.bias.view(1, -1, 1, 1).expand_as(out))


def test_an_emptied_strided_branch_is_exact() -> None:
    model, x = _resnet20(), torch.randn(2, 3, 32, 32)
    pruned = apply(model, {"layer2.0.conv1": [], "layer3.0.conv1": []}, x)  # both stride 2: checked
    assert type(pruned.layer2[0].conv2) is EmptyConv2d
    # both blocks' convs, at their output sizes: 16x16 (16->32, 32->32) and 8x8 (32->64, 64->64)
    saved = (16 * 32 + 32 * 32) * 9 * 16 * 16 + (32 * 64 + 64 * 64) * 9 * 8 * 8
    assert cost(model, (3, 32, 32)).macs - cost(pruned, (3, 32, 32)).macs == saved


def test_auto_depth_needs_a_mac_budget() -> None:
    from prunekit.errors import ConfigError
    from prunekit.methods.alignment import deployment_selection, resolve_round_to
    from prunekit.methods.selection import Selection

    with pytest.raises(ConfigError, match=r"auto\+depth removes whole residual blocks.*target_macs="):
        deployment_selection(Selection.of(target_latency=0.5), "auto+depth")
    with pytest.raises(ConfigError, match=r"round_to=auto\+depth"):
        deployment_selection(None, "auto+depth")
    with pytest.raises(ConfigError, match=r"round_to must be a whole number ≥ 1, 'auto' or 'auto\+depth'"):
        resolve_round_to("depth")


def test_a_depth_pruned_model_is_not_pruned_again() -> None:
    from prunekit.methods import create_method

    model, x = _resnet20(), torch.randn(2, 3, 32, 32)
    pruned = apply(model, {"layer1.1.conv1": []}, x)
    with pytest.raises(SurgeryError, match=r"branches removed whole \(layer1.1.conv1, .*prune the orig"):
        create_method("l1", rates="0.3").plan(pruned, x)


def test_auto_depth_is_refused_by_methods_whose_budget_cannot_remove_blocks(tmp_path, capsys) -> None:
    from prunekit.cli import main
    from prunekit.errors import ConfigError
    from prunekit.methods import create_method
    from prunekit.methods.selection import Selection

    depth = Selection.of(target_macs=0.25)
    depth = dataclasses.replace(depth.with_round_to(8, auto=True), depth=True)
    for name in ("l1", "fpgm", "random"):  # their budget search is the one that removes blocks
        assert create_method(name, depth).selection.depth
    for name in ("hrank", "tpp", "slimming", "trp", "redundancy_graph", "tp-magnitude"):
        with pytest.raises(ConfigError, match=rf"'{name}' does not remove whole residual blocks.*fpgm, l1"):
            create_method(name, depth)
    model_file.save(create("lenet5").eval(), tmp_path / "d.safetensors")
    argv = ["prune", str(tmp_path / "d.safetensors"), "--method", "hrank", "--target-macs", "0.5"]
    argv += ["--round-to", "auto+depth", "--data", "synthetic", "--data-option", "shape=1x28x28", "--out"]
    assert main([*argv, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'hrank' does not remove whole residual blocks" in err and len(err.strip().splitlines()) == 1
