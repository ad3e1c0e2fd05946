"""DeepHoyer method: options, penalty, both threshold rules, structural removal, masked fine-tuning."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunekit.data import DeviceLoader, load_dataset
from prunekit.errors import ConfigError
from prunekit.measure.sparsity import sparsity_report
from prunekit.methods.base import create_method
from prunekit.methods.deephoyer import DeepHoyer, DeepHoyerOptions
from prunekit.models import create
from prunekit.surgery.dead_channels import zero_channel_plan
from prunekit.surgery.masks import MaskSet, attach, fold
from prunekit.train import TrainConfig, fit


def linear(weight, bias) -> nn.Sequential:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return nn.Sequential(layer)


def method(**options) -> DeepHoyer:
    return DeepHoyer(DeepHoyerOptions(**options))


# ------------------------------------------------------------------ options


def test_options_come_from_strings_through_the_registry():
    m = create_method(
        "deephoyer", regularizer="group_hs", decay="0.002", structural="true", sensitivity="0.8"
    )
    assert isinstance(m, DeepHoyer)
    assert (m.options.decay, m.options.structural, m.options.sensitivity) == (0.002, True, 0.8)


def test_bad_options_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="decay must be >= 0, got -0.1"):
        DeepHoyerOptions(decay=-0.1)
    with pytest.raises(ConfigError, match=r"unknown regularizer 'hs'; valid regularizers: .*hoyer_square"):
        DeepHoyerOptions(regularizer="hs")
    with pytest.raises(
        ConfigError, match=r"unknown threshold rule 'percentile'; valid threshold rules: fixed, std"
    ):
        DeepHoyerOptions(threshold="percentile")
    with pytest.raises(ConfigError, match="biases have no such groups"):
        DeepHoyerOptions(regularizer="group_lasso", include_biases=True)


def test_biases_follow_the_release_element_wise_and_never_for_groups():
    model = create("lenet300_100")
    assert list(method(regularizer="hoyer").tensors(model)) == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias",
    ]  # fmt: skip
    assert list(method(regularizer="group_hs").tensors(model)) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert list(method(regularizer="l1", include_biases=False).tensors(model)) == [
        "fc1.weight", "fc2.weight", "fc3.weight",
    ]  # fmt: skip


# ------------------------------------------------------------------ penalty


def test_penalty_is_decay_times_one_term_per_tensor():
    model = linear([[3.0, 4.0], [0.0, 0.0]], [1.0, 2.0])
    # HS(weight) = 49/25, HS(bias) = 9/5
    assert float(method(regularizer="hoyer_square", decay=0.5).penalty(model).detach()) == pytest.approx(
        0.5 * (49 / 25 + 9 / 5)
    )
    assert float(
        method(regularizer="hoyer_square", decay=0.5, include_biases=False).penalty(model).detach()
    ) == pytest.approx(0.98)
    # Group-HS on the weight only: rows 5, 0; columns 3, 4 → (25 + 49)/25
    penalty = method(regularizer="group_hs", decay=0.5).penalty(model)
    assert float(penalty.detach()) == pytest.approx(0.5 * 74 / 25)
    penalty.backward()  # the zero row must not give NaN
    assert torch.isfinite(model[0].weight.grad).all()
    assert method(decay=0.0).penalty(model) is None


# ------------------------------------------------------------------ thresholds


def test_fixed_threshold_is_strict_and_reaches_the_biases_element_wise():
    model = linear([[1.0, -0.01, 0.5, 0.001], [0.002, 2.0, 0.0, -3.0]], [0.0005, 1.0])
    result = method(regularizer="l1", threshold="fixed", sensitivity=0.01).prune(model)
    assert result.thresholds == {"0.weight": 0.01, "0.bias": 0.01}
    assert result.masks["0.weight"].tolist() == [[True, True, True, False], [False, True, False, True]]
    assert result.masks["0.bias"].tolist() == [False, True]
    report = sparsity_report(result.model).to_dict()
    assert (report["nonzero"], report["total"], report["pruned_pct"]) == (6, 10, 40.0)
    assert float(model[0].weight[0, 3].detach()) == pytest.approx(0.001)  # the input model is left alone


def test_std_threshold_uses_the_population_std_per_tensor():
    # mean 0, population variance (4+4+1+1)/4 = 2.5 (the sample variance would be 10/3)
    model = linear([[2.0, -2.0], [1.0, -1.0]], [0.0, 0.0])
    m = method(regularizer="hoyer", sensitivity=0.6)
    assert m.thresholds(model)["0.weight"] == pytest.approx(0.6 * math.sqrt(2.5))
    assert m.masks(model)["0.weight"].all()  # t = 0.949 keeps ±1 (ddof 1 would give 1.095)
    assert method(regularizer="hoyer", sensitivity=0.7).masks(model)["0.weight"].tolist() == [
        [True, True], [False, False],
    ]  # fmt: skip


def test_a_threshold_that_empties_a_layer_is_refused_naming_it():
    model = create("lenet300_100")
    with pytest.raises(ConfigError, match=r"prunes every weight of layer 'fc1' .*lower the sensitivity"):
        method(threshold="fixed", sensitivity=10.0).masks(model)


# ------------------------------------------------------------------ structural removal


def assert_same_outputs(result, model, x, cutoff):
    weights_and_biases = [n for n, p in model.named_parameters()]
    masked = fold(copy.deepcopy(model), MaskSet.from_threshold(model, cutoff, params=weights_and_biases))
    masked.eval()
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), masked(x), rtol=1e-5, atol=1e-6)


def test_structural_lenet300_removes_dead_rows_and_unused_columns():
    model = create("lenet300_100")
    with torch.no_grad():
        model.fc1.weight[:10] = 1e-6  # rows 0-9 fall below the threshold (biases too)
        model.fc1.bias[:10] = 0.0
        model.fc1.bias[10] = 0.0
        model.fc1.weight[10] = 1e-6
        model.fc1.bias[10] = 0.5  # zero row, nonzero bias: a constant unit, kept
        model.fc2.weight[:, 20:25] = -1e-6  # fc1 units 20-24 feed nothing
        model.fc2.weight[3:5] = 0.0
        model.fc2.bias[3:5] = 0.0
        model.fc3.weight[:, 50] = 0.0  # fc2 unit 50 feeds nothing
        model.fc1.weight[100, :5] = 0.0  # a partial zero stays a mask
    options = {"regularizer": "l1", "threshold": "fixed", "sensitivity": 1e-4, "structural": True}
    calib = torch.rand(8, 1, 28, 28)
    result = method(**options, fold_constants=False).prune(model, calib)
    assert result.plan["fc1"] == sorted(set(range(300)) - set(range(10)) - set(range(20, 25)))
    assert result.plan["fc2"] == sorted(set(range(100)) - {3, 4, 50})
    assert "fc3" not in result.plan  # the classifier's outputs are never removed
    shapes = [tuple(result.model.get_submodule(n).weight.shape) for n in ("fc1", "fc2", "fc3")]
    assert shapes == [(285, 784), (97, 285), (10, 97)]
    assert set(result.masks) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
    assert not result.masks["fc1.weight"][85, :5].any()  # old row 100, after 15 rows went before it
    assert_same_outputs(result, model, torch.rand(16, 1, 28, 28), 1e-4)

    # By default the constant unit 10 goes as well, its ReLU(0.5) folded into fc2's bias.
    folded = method(**options).prune(model, calib)
    assert folded.plan["fc1"] == [c for c in result.plan["fc1"] if c != 10]
    assert folded.plan["fc2"] == result.plan["fc2"]
    assert_same_outputs(folded, model, torch.rand(16, 1, 28, 28), 1e-4)


def test_structural_lenet5_removes_dead_filters_and_channels_through_the_flatten():
    model = create("lenet5")
    with torch.no_grad():
        model.conv1.weight[3] = 0.0
        model.conv1.bias[3] = 0.0
        model.conv1.weight[0] = 0.0  # bias stays nonzero: a constant map, kept
        model.conv2.weight[:, 5] = 1e-5  # conv1 channel 5 feeds nothing
        model.conv2.weight[7] = 0.0
        model.conv2.bias[7] = 0.0
        model.fc1.weight[:, 16 * 9 : 16 * 10] = 0.0  # conv2 channel 9's 4×4 map feeds nothing
        model.fc1.weight[11] = 0.0
        model.fc1.bias[11] = 0.0
        model.fc2.weight[:, 42] = 0.0
    options = {"regularizer": "group_hs", "threshold": "fixed", "sensitivity": 1e-4, "structural": True}
    calib = torch.rand(8, 1, 28, 28)
    result = method(**options, fold_constants=False).prune(model, calib)
    assert {name: len(kept) for name, kept in result.plan.items()} == {"conv1": 18, "conv2": 48, "fc1": 498}
    assert 0 in result.plan["conv1"] and 3 not in result.plan["conv1"] and 5 not in result.plan["conv1"]
    shapes = [tuple(result.model.get_submodule(n).weight.shape) for n in ("conv1", "conv2", "fc1", "fc2")]
    assert shapes == [(18, 1, 5, 5), (48, 18, 5, 5), (498, 768), (10, 498)]
    assert set(result.masks) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}  # no biases
    masked = fold(copy.deepcopy(model), MaskSet.from_threshold(model, 1e-4))
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), masked.eval()(x), rtol=1e-5, atol=1e-6)

    # By default the constant map of conv1 filter 0 goes too: conv2 has no padding, so conv2's bias takes it.
    folded = method(**options).prune(model, calib)
    assert folded.plan["conv1"] == [c for c in result.plan["conv1"] if c != 0]
    assert tuple(folded.model.conv2.weight.shape) == (48, 17, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded.model.eval()(x), masked(x), rtol=1e-5, atol=1e-5)


def test_a_zero_filter_before_batchnorm_is_dead_only_when_gamma_and_beta_are_zero():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3),
        nn.Flatten(),
        nn.Linear(12, 2),
    ).eval()
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[1].bias[1] = 0.3  # BN(0) = β: a constant channel
    assert zero_channel_plan(model, x) == {}
    with torch.no_grad():
        model[1].weight[1] = 0.0
        model[1].bias[1] = 0.0
    assert zero_channel_plan(model, x) == {"0": [0, 2, 3]}


def test_element_wise_prune_removes_nothing_and_structural_needs_calibration_inputs():
    model = create("lenet300_100")
    assert method(sensitivity=0.1).plan(model, None) == {}
    with pytest.raises(ConfigError, match="needs calibration inputs"):
        method(sensitivity=0.1, structural=True).prune(model)


# ------------------------------------------------------------------ sparsify → prune → masked fine-tune


def test_sparsify_then_masked_finetune_keeps_the_zeros_exactly_zero():
    shape, classes = (1, 28, 28), 10
    kw = {"num_classes": classes, "shape": shape, "seed": 0}
    train = DeviceLoader(load_dataset("synthetic", "train", num_samples=128, **kw), 32, train=True)
    val = DeviceLoader(load_dataset("synthetic", "test", num_samples=64, **kw), 64, train=False)
    model = create("lenet300_100")
    hs = method(regularizer="hoyer_square", decay=2e-4, sensitivity=0.5)
    before = float(hs.penalty(model).detach())
    adam = dict(optimizer="adam", lr=1e-3, schedule="constant", amp="off", channels_last="off")
    log = fit(
        model,
        train,
        val,
        TrainConfig(epochs=2, batch_size=32, weight_decay=0.0, **adam),
        method=hs,
        progress=False,
    )
    assert float(hs.penalty(model).detach()) < before  # the regulariser did push toward sparsity
    assert "train_penalty" in log.history[-1]

    result = hs.prune(model)
    pruned = result.model
    zeros = {name: ~mask for name, mask in result.masks.items()}
    assert sum(int(z.sum()) for z in zeros.values()) > 0
    handle = attach(pruned, result.masks)
    fit(
        pruned,
        train,
        val,
        TrainConfig(epochs=1, batch_size=32, weight_decay=1e-4, **adam),
        method=handle,
        progress=False,
    )
    params = dict(pruned.named_parameters())
    for name, zero in zeros.items():
        assert bool((params[name][zero] == 0).all()), name
    report = sparsity_report(pruned)
    expected_zeros = sum(int(z.sum()) for z in zeros.values())
    assert report.pruned == expected_zeros


def test_prune_biases_lets_a_filter_with_dead_weights_disappear():
    # conv2 filter 7: all weights zero, a tiny bias. Group regularisers leave biases alone, so without the
    # constant fold the filter survives as a constant ReLU(bias) map; thresholding biases too (the MNIST
    # release) removes it.
    model = create("lenet5")
    with torch.no_grad():
        model.conv2.weight[7] = 0.0
        model.conv2.bias[7] = 5e-5
    calib = torch.rand(8, 1, 28, 28)
    options = {"regularizer": "group_hs", "threshold": "fixed", "sensitivity": 1e-4, "structural": True}
    kept = method(**options, fold_constants=False).prune(model, calib)
    assert "conv2" not in kept.plan
    folded = method(**options).prune(model, calib)  # the default: the constant goes into fc1's bias
    assert folded.plan["conv2"] == [c for c in range(50) if c != 7]
    gone = method(
        regularizer="group_hs", threshold="fixed", sensitivity=1e-4, structural=True, prune_biases=True
    ).prune(model, calib)
    assert gone.plan["conv2"] == [c for c in range(50) if c != 7]
    assert tuple(gone.model.conv2.weight.shape) == (49, 20, 5, 5)
    assert "conv2.bias" in gone.masks  # the thresholded biases are masks the fine-tune keeps at zero
