"""The prune path's shortcuts (issue 13, speed) keep their guarantees: one forward at the example's own batch
to trace, a pruned copy that shares nothing with the model, and a masking check that leaves the model as it
found it, also when it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import SurgeryError
from prunekit.models import create
from prunekit.surgery import apply, channels, prunable_layers
from prunekit.surgery.graph import graph_of


class Recorded(nn.Module):
    """Conv → BN → conv → head; records the shape of every input its forward is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((-2, -1)))


def test_tracing_runs_one_forward_on_the_example_as_given() -> None:
    # torch-pruning calls `model(*example)` first: for a tensor at batch one that is an unbatched forward
    # (which this model, like any conv net, accepts); the example must reach the model as one argument
    model = Recorded()
    graph = graph_of(model, torch.randn(1, 3, 8, 8))
    assert model.calls == [(1, 3, 8, 8)]
    assert graph.output_shape == (1, 5)
    assert graph.order == ["conv1", "conv2", "fc"]
    assert [g.members for g in graph.groups()] == [("conv1",), ("conv2",)]


class Tied(nn.Module):
    """Two heads that share one weight behind the pruned layers, a plain list attribute (and, in the test, a
    forward hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.a = nn.Linear(6, 6, bias=False)
        self.b = nn.Linear(6, 6, bias=False)
        self.gain_a = nn.Linear(6, 2)
        self.gain_b = nn.Linear(6, 2)
        self.gain_b.weight = self.gain_a.weight
        self.notes = ["dense"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x)).mean((2, 3))
        return self.gain_a(self.a(x)) + self.gain_b(self.b(x))


def test_the_pruned_copy_shares_nothing_and_keeps_ties_and_hooks() -> None:
    torch.manual_seed(0)
    model = Tied().eval()
    seen: list[int] = []
    model.a.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[1]))
    x = torch.randn(1, 3, 4, 4)
    pruned = apply(model, {"conv": [0, 2, 4]}, x)

    assert (pruned.conv.out_channels, pruned.bn.num_features, pruned.a.in_features) == (3, 3, 3)
    assert model.conv.out_channels == 6 and model.a.weight.shape == (6, 6)  # the model is untouched
    originals = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
    assert not originals & {t.data_ptr() for t in (*pruned.parameters(), *pruned.buffers())}
    assert not {id(m) for m in model.modules()} & {id(m) for m in pruned.modules()}
    assert pruned.gain_b.weight is pruned.gain_a.weight  # a tie the cut does not touch stays a tie
    pruned.notes.append("pruned")
    assert model.notes == ["dense"]
    seen.clear()
    with torch.no_grad():
        pruned(x)
    assert seen == [6]  # the copy's own hook ran (Linear 3 -> 6)
    torch.testing.assert_close(pruned.conv.weight, model.conv.weight[[0, 2, 4]])
    torch.testing.assert_close(pruned.a.weight, model.a.weight[:, [0, 2, 4]])


class ScaledByWidth(nn.Module):
    """Its forward divides by the channel count: pruning `conv1` is not the same as masking it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x / x.shape[1]
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def test_a_refused_check_leaves_the_models_tensors_flags_and_hooks_as_they_were() -> None:
    torch.manual_seed(0)
    model = ScaledByWidth().train()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(0.5, 1.0)
    before = {name: (t, t.clone()) for name, t in (*model.named_parameters(), *model.named_buffers())}
    with pytest.raises(SurgeryError, match=r"not the same as masking from layer 'conv2'"):
        apply(model, {"conv1": [0, 1, 2, 3, 4, 5]}, torch.randn(1, 3, 8, 8))
    after = dict((*model.named_parameters(), *model.named_buffers()))
    assert after.keys() == before.keys()
    for name, (tensor, values) in before.items():
        assert after[name] is tensor, name  # the neutralised stand-ins were swapped back out
        torch.testing.assert_close(tensor, values, rtol=0, atol=0)
    assert model.conv1.bias.abs().sum() > 0 and bool((model.bn1.running_mean >= 0.5).all())
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())


# ------------------------------------------------------------------ the masked forward's narrowed convs
# On the example, a conv whose removed filters cost enough MACs computes only its kept filters in the masked
# reference forward (`channels._narrowed_convs`); the tiny models here are far below that threshold, so the
# tests lower it to 0 to put every plain conv on the narrowed path.


@pytest.fixture
def narrow_everything(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    narrowed: list[int] = []
    real = channels._narrowed_convs

    def counting(*args: object) -> tuple:
        state, kept = real(*args)
        narrowed.append(len(kept))
        return state, kept

    monkeypatch.setattr(channels, "_NARROW_MIN_MACS", 0)
    monkeypatch.setattr(channels, "_narrowed_convs", counting)
    return narrowed


@pytest.mark.parametrize("arch", ["resnet20", "densenet40", "googlenet"])
def test_sound_prunes_pass_the_check_with_narrowed_convs(arch: str, narrow_everything: list[int]) -> None:
    # option-A shortcuts (resnet20), concatenations (densenet40, googlenet): a misplaced kept channel in
    # the narrowed reference would make these correct prunes fail the check
    torch.manual_seed(0)
    model, x = create(arch).eval(), torch.randn(1, 3, 32, 32)
    plan = {}
    for layer in prunable_layers(model, x):
        if layer.name == layer.group[0] and layer.name != "fc":
            keep = layer.out_channels - layer.out_channels // 2
            plan[layer.name] = sorted(torch.randperm(layer.out_channels)[:keep].tolist())
    apply(model, plan, x)
    assert narrow_everything and narrow_everything[0] >= len(plan)


def test_a_width_dependent_forward_is_still_refused_with_narrowed_convs(narrow_everything: list[int]) -> None:
    model = ScaledByWidth().eval()
    with pytest.raises(SurgeryError, match=r"not the same as masking from layer 'conv2'"):
        apply(model, {"conv1": [0, 1, 2, 3, 4, 5], "conv2": [0, 1, 2]}, torch.randn(1, 3, 8, 8))
    assert narrow_everything == [2]


def test_the_narrowed_masked_forward_equals_the_zeroed_one() -> None:
    torch.manual_seed(0)
    model, x = create("resnet20").eval(), torch.randn(2, 3, 16, 16)
    graph = graph_of(model, x)
    # channels 0, 3 and 5 of the stem, and with them of the first stage's whole residual group
    removals = graph.removed(graph.atoms(graph.slot("conv1", "out"))[[0, 3, 5]])
    assert ("conv1", "out") in removals and ("layer1.0.conv2", "out") in removals
    state, kept = channels._narrowed_convs(model, removals, graph)
    assert not kept  # 16x16 positions of a 3x3 conv: far below the threshold

    def masked(narrowed: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> torch.Tensor:
        hooks = channels._zeroing_hooks(model, removals, narrowed)
        try:
            with torch.no_grad(), channels._substituted(model, extra):
                return model(x)
        finally:
            for h in hooks:
                h.remove()

    old = channels._NARROW_MIN_MACS
    channels._NARROW_MIN_MACS = 0
    try:
        state, kept = channels._narrowed_convs(model, removals, graph)
    finally:
        channels._NARROW_MIN_MACS = old
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(kept)
    assert kept["conv1"].tolist() == [i for i in range(16) if i not in (0, 3, 5)]
    assert state["conv1.weight"].shape == (13, 3, 3, 3)
    torch.testing.assert_close(masked(kept, state), masked({}, {}), rtol=1e-5, atol=1e-6)
