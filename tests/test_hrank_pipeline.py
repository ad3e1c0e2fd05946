"""HRank's pipelines: the layerwise mask-and-fine-tune schedule, real removal of the masked channels, both
counts, and the CLI end to end (specs/hrank.md §3.1, §2.2, §5)."""

import json
import warnings

import pytest
import torch

from prunekit import model_file as checkpoint
from prunekit.cli import main
from prunekit.data import build_loaders
from prunekit.errors import ConfigError
from prunekit.measure import cost
from prunekit.methods import create_method
from prunekit.methods.hrank import hrank_legacy_cost
from prunekit.methods.hrank.schedule import (
    fed_batchnorms,
    layerwise_prune,
    mask_prune,
    paper_cost,
    remove_dead_channels,
)
from prunekit.models import create
from prunekit.train import TrainConfig, evaluate

STAGE = TrainConfig(epochs=1, lr=0.01, schedule="constant", weight_decay=0.0)


def synthetic(shape: tuple[int, int, int]):  # noqa: ANN201 - (train, val) loaders
    train, val, _ = build_loaders(
        "synthetic", 32, limit_train=64, limit_test=32, num_samples=64, shape=shape, normalize=False
    )
    return train, val


def index_scores(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rank = channel index, so HRank prunes the lowest-numbered filters of every conv."""
    return {
        name: torch.arange(m.out_channels, dtype=torch.float32)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    }


def test_layerwise_masks_filters_stage_by_stage_and_keeps_the_best_weights(tmp_path) -> None:
    train, val = synthetic((3, 16, 16))
    dense = create("resnet20")
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    # 19 entries: stem + 6 convs of stage 1 at 0.5, stage 2 untouched (still trained), stage 3 at 0.25.
    method = create_method("hrank", rates="[0.5]*7+[0.0]*6+[0.25]*6", n_images=32)
    result = layerwise_prune(dense, method, train, val, STAGE, run_dir=tmp_path)

    assert [s.entry for s in result.stages] == list(range(19))
    assert all(s.trained and s.best_top1 is not None for s in result.stages)
    assert result.stages[0].kept == {"conv1": 8}
    assert result.stages[7].kept == {"layer2.0.conv1": 32}
    assert result.stages[18].kept == {"layer3.2.conv2": 48}
    logged = [json.loads(line) for line in (tmp_path / "stages.jsonl").read_text().splitlines()]
    assert [row["entry"] for row in logged] == list(range(19))
    assert logged[18]["layers"] == ["layer3.2.conv2"] and logged[18]["kept"] == {"layer3.2.conv2": 48}
    assert (tmp_path / "stage012" / "log.jsonl").is_file()  # a rate-0 stage trained too

    params = dict(result.model.named_parameters())
    # Each conv's own BN is masked with it (γ and β); conv biases do not exist in the CIFAR ResNet.
    assert int(result.masks["layer1.0.bn1.weight"].sum()) == 8
    assert int(result.masks["layer3.1.bn2.bias"].sum()) == 48
    assert "layer2.0.conv1.weight" not in result.masks
    for name, mask in result.masks.items():
        assert bool((params[name][~mask] == 0).all()), name
    for conv in ("conv1", "layer1.0.conv1", "layer3.2.conv2"):
        rows = params[f"{conv}.weight"].detach().flatten(1)
        kept = result.masks[f"{conv}.weight"].flatten(1).all(1)
        assert bool((rows[kept].abs().sum(1) > 0).all()), conv
    # The model continues from the last stage's best-validation weights; the input model is untouched.
    assert evaluate(result.model, val)["top1"] == pytest.approx(result.stages[-1].best_top1)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_zero_rate_stages_train_unless_skipped(tmp_path) -> None:
    train, val = synthetic((1, 28, 28))
    model = create("lenet5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the zoo's LeNet-5 has its own HRank layout: no fallback notice
        trained = layerwise_prune(
            model, create_method("hrank", rates="[0.5]+[0.0]", n_images=32), train, val, STAGE,
            run_dir=tmp_path / "all",
        )  # fmt: skip
    assert [(s.trained, s.best_top1 is not None) for s in trained.stages] == [(True, True), (True, True)]
    assert (tmp_path / "all" / "stage001" / "log.jsonl").is_file()

    method = create_method("hrank", rates="[0.5]+[0.0]", n_images=32, skip_zero_rate_stages="true")
    skipped = layerwise_prune(model, method, train, val, STAGE, run_dir=tmp_path / "skip")
    assert [(s.trained, s.best_top1) for s in skipped.stages][1] == (False, None)
    assert skipped.stages[0].trained and skipped.stages[1].kept == {"conv2": 50}
    assert not (tmp_path / "skip" / "stage001").exists()
    # LeNet-5 has no BN: conv weight and bias are the whole mask.
    assert set(skipped.masks) == {"conv1.weight", "conv1.bias"}


def test_train_stages_mask_every_stage_but_train_only_the_listed_ones(tmp_path) -> None:
    train, val = synthetic((1, 28, 28))
    model = create("lenet5")
    method = create_method("hrank", rates="[0.5]+[0.6]", n_images=32, schedule="layerwise", train_stages="2")
    assert method.options.train_stages == (2,)  # the CLI's comma list, 1-based as HRank's cov_id
    result = layerwise_prune(model, method, train, val, STAGE, run_dir=tmp_path)
    assert [(s.trained, s.best_top1 is not None) for s in result.stages] == [(False, False), (True, True)]
    assert not (tmp_path / "stage000").exists() and (tmp_path / "stage001" / "log.jsonl").is_file()
    # Stage 1's mask still applies (and stays applied through stage 2's training): 10 of 20 filters.
    weights = dict(result.model.named_parameters())
    assert int((weights["conv1.weight"].detach().flatten(1).abs().sum(1) > 0).sum()) == 10
    assert int((weights["conv2.weight"].detach().flatten(1).abs().sum(1) > 0).sum()) == 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"train_stages": [0, 5]},
            r"train_stages must list stage numbers from 1 \(HRank's cov_id\), got \[0, 5\]",
        ),
        ({"train_stages": "1,x"}, r"option 'train_stages' of method 'hrank' must be a whole number, got 'x'"),
        ({"train_stages": [1], "schedule": "oneshot"}, r"train_stages chooses stages of schedule=layerwise"),
    ],
)
def test_bad_train_stages_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_method("hrank", **{"schedule": "layerwise", **options})


def test_train_stages_beyond_the_architecture_say_how_many_stages_it_has() -> None:
    train, val = synthetic((1, 28, 28))
    method = create_method("hrank", rates="0.5", schedule="layerwise", train_stages=[1, 3])
    message = r"train_stages names stage 3, but lenet5 has 2 HRank stages \(1\.\.2, one per"
    with pytest.raises(ConfigError, match=message):
        layerwise_prune(create("lenet5"), method, train, val, STAGE)


def test_batchnorms_fed_by_a_conv_follow_concatenations() -> None:
    model = create("densenet40")
    fed = fed_batchnorms(model, torch.zeros(1, 3, 32, 32))
    # dense1.3's 12 filters are appended after the stem's 24 and three layers' 12 (channels 60..71) and
    # seen by every later BN of the block (HRank's running-concat mask), by nothing past the transition.
    reached = fed["dense1.3.conv1"]
    assert sorted(reached) == sorted([f"dense1.{i}.bn1" for i in range(4, 12)] + ["trans1.bn1"])
    source = reached["dense1.5.bn1"]
    assert source.tolist() == [-1] * 60 + list(range(12)) + [-1] * 12
    assert list(fed["conv1"]) == [f"dense1.{i}.bn1" for i in range(12)] + ["trans1.bn1"]


def test_real_removal_is_exact_and_keeps_shortcut_fed_channels_masked(tmp_path) -> None:
    model = create("resnet20").eval()
    images = torch.randn(8, 3, 16, 16)
    method = create_method("hrank", rates="0.5")
    method.scores = index_scores(model)  # prune filters 0..n/2-1 of every conv
    masked = mask_prune(model, method, images)
    smaller, masks, removed = remove_dead_channels(masked.model, masked.masks, images)

    with torch.no_grad():
        assert torch.allclose(masked.model(images), smaller(images), atol=1e-5)
    widths = {n: m.out_channels for n, m in smaller.named_modules() if isinstance(m, torch.nn.Conv2d)}
    # Stage 1 (stem-fed): all 8 zeroed channels go. Stages 2 and 3: the option-A shortcut writes channels
    # 8..23 of 32 and 16..47 of 64, so of the zeroed 0..15 / 0..31 only 0..7 / 0..15 can go.
    assert (widths["layer1.2.conv2"], widths["layer2.0.conv2"], widths["layer3.1.conv2"]) == (8, 24, 48)
    assert (widths["layer1.0.conv1"], widths["layer2.1.conv1"], widths["layer3.2.conv1"]) == (8, 16, 32)
    assert removed["layer2.0.conv2"] == 8 and removed["layer3.0.conv1"] == 32
    # What stays zero is recorded as masks: the shortcut-fed conv2 rows.
    assert masks is not None and int((~masks["layer2.0.conv2.weight"].flatten(1).all(1)).sum()) == 8
    assert cost(smaller, (3, 16, 16)).macs < cost(model, (3, 16, 16)).macs

    checkpoint.save(smaller, tmp_path / "m.safetensors")
    loaded = checkpoint.load(tmp_path / "m.safetensors").eval()
    assert set(loaded.prunekit_masks) == set(masks)
    with torch.no_grad():
        assert torch.equal(loaded(images), smaller(images))


def test_paper_count_is_hranks_counter() -> None:
    # The README's ResNet-56 row: 62.72 M FLOPs / 0.49 M params (spec §5.1), counted on the model itself.
    with torch.device("meta"):
        model = create("resnet56")
    legacy = paper_cost(model, "resnet56_hrank_93.17", (3, 32, 32))
    assert (legacy.flops, legacy.params) == (62_715_530, 489_359)
    assert legacy == hrank_legacy_cost("resnet56", "resnet56_hrank_93.17")


TINY = ["--data-option", "num_samples=64", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32"]


def test_cli_mask_mode_reports_both_counts_on_synthetic_data(tmp_path, capsys) -> None:
    data = ["--data", "synthetic", "--data-option", "shape=3x16x16", *TINY, "--device", "cpu"]
    assert main(["train", "--arch", "resnet20", *data, "--epochs", "1", "--out", str(tmp_path / "d")]) == 0
    rates = "[0.5]*7+[0.0]*6+[0.25]*6"
    argv = ["prune", str(tmp_path / "d" / "model.safetensors"), "--method", "hrank", "--ratios", rates]
    argv += ["--option", "mode=mask", "--calib-images", "32", "--option", "n_images=32"]
    assert main([*argv, *data, "--finetune-epochs", "1", "--out", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    hrank = summary["hrank"]
    with torch.device("meta"):
        legacy = paper_cost(create("resnet20"), rates, (3, 16, 16))
    assert (hrank["legacy_flops"], hrank["legacy_params"]) == (legacy.flops, legacy.params)
    assert hrank["true_macs"] == summary["pruned"]["macs"] < summary["dense"]["macs"]
    assert hrank["true_macs"] < hrank["legacy_flops"]  # real removal also shrinks the inputs
    assert hrank["stages"] == [] and hrank["removed_channels"]["layer1.0.conv1"] == 8
    model = checkpoint.load(tmp_path / "p" / "model.safetensors")
    params = dict(model.named_parameters())
    assert "layer1.0.conv2.weight" in model.prunekit_masks  # the shortcut-fed zeros stay masked
    for name, mask in model.prunekit_masks.items():
        assert bool((params[name][~mask] == 0).all()), name
    capsys.readouterr()


def test_cli_layerwise_on_fashion_mnist_and_bad_rates(tmp_path, shared_data, capsys) -> None:
    data = ["--data", "fashion_mnist", "--data-root", str(shared_data), "--limit-train", "1024"]
    data += ["--limit-test", "512", "--batch-size", "128", "--device", "cpu"]
    assert main(["train", "--arch", "lenet5", *data, "--epochs", "1", "--out", str(tmp_path / "d")]) == 0
    base = ["prune", str(tmp_path / "d" / "model.safetensors"), "--method", "hrank"]
    layerwise = ["--option", "schedule=layerwise", "--calib-images", "256", "--option", "n_images=256"]
    code = main([*base, "--ratios", "[0.5]+[0.6]", *layerwise, *data, "--finetune-epochs", "1",
                 "--out", str(tmp_path / "p")])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    stages = summary["hrank"]["stages"]
    assert [(s["entry"], s["kept"]) for s in stages] == [(0, {"conv1": 10}), (1, {"conv2": 20})]
    assert summary["widths_after"]["conv1"] == 10 and summary["widths_after"]["conv2"] == 20
    assert summary["pruned"]["top1"] == pytest.approx(stages[-1]["best_top1"])
    assert summary["pruned"]["top1"] > 50  # two stages of fine-tuning on real Fashion-MNIST
    legacy = hrank_legacy_cost("lenet5", "[0.5]+[0.6]")
    assert summary["hrank"]["legacy_flops"] == legacy.flops
    assert summary["hrank"]["true_macs"] == summary["pruned"]["macs"] < legacy.flops
    assert summary["hrank"]["masked_params"] == []  # LeNet-5 has no shortcut: every zeroed filter went
    capsys.readouterr()

    out = str(tmp_path / "bad")
    assert main([*base, "--ratios", "[0.5]*3", *data, "--finetune-epochs", "1", "--out", out]) == 2
    assert "has 3 entries but lenet5 needs 2" in capsys.readouterr().err
    assert main([*base, "--ratios", "[1.0]+[0.5]", *data, "--out", out + "2"]) == 2
    assert "ratio 1 is outside [0, 1)" in capsys.readouterr().err
    assert main([*base, "--ratios", "0.5", *layerwise, *data, "--out", out + "3"]) == 2
    assert "--finetune-epochs" in capsys.readouterr().err


def test_a_uniform_ratio_reaches_the_hidden_linears_in_every_hrank_mode() -> None:
    """As for L1, LeNet-5's fc1 loses half its units at ratio 0.5 in the one-shot, the masked and the
    layer-wise modes (ranked by firing fraction); a list expression, HRank's own form, ranks convs only."""
    import prunekit

    train, val = synthetic((1, 28, 28))
    torch.manual_seed(0)
    dense = create("lenet5").eval()
    x = next(iter(train))[0]
    for mode in ("remove", "mask"):
        pruned = prunekit.prune(dense, x[:1], method="hrank", ratio=0.5, calib=x, mode=mode, n_images=32)
        widths = (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.fc1.out_features)
        assert widths == (10, 25, 250), mode
    method = create_method("hrank", rates="0.5", schedule="layerwise", n_images=32)
    method.prepare(dense, x)
    result = layerwise_prune(dense, method, train, val, STAGE, calib=x)
    assert [s.kept for s in result.stages] == [{"conv1": 10}, {"conv2": 25}, {"fc1": 250}]
    assert int(result.masks["fc1.weight"].flatten(1).all(1).sum()) == 250
    listed = prunekit.prune(dense, x[:1], method="hrank", ratios="[0.5]*2", calib=x, n_images=32)
    assert listed.fc1.out_features == 500
