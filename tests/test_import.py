"""`prunekit import`: files written in each original code's exact key layout and container, generated from
the zoo by renaming keys, import into models that reload with `prunekit.load` to identical outputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import prunekit
from prunekit.cli import main
from prunekit.errors import CheckpointError, ConfigError
from prunekit.model_file import read_metadata
from prunekit.model_import import import_checkpoint, import_to_file
from prunekit.models import create

# HRank's vgg.py: the cfg list, whose positions name the layers (`features.conv{i}`, `features.norm{i}`).
HRANK_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and biases, so that a misplaced tensor changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _same_outputs(original: nn.Module, path: Path, shape: tuple[int, ...] = (3, 32, 32)) -> None:
    reloaded = prunekit.load(path).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(x), original.eval()(x))


def _hrank_vgg_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """Ours `features.{module index}` → HRank `features.conv{cfg position}`, `features.norm{cfg position}`."""
    ours_conv = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    theirs = [i for i, v in enumerate(HRANK_VGG_CFG) if v != "M"]
    rename = {}
    for ours, pos in zip(ours_conv, theirs, strict=True):
        rename[f"features.{ours}."] = f"features.conv{pos}."
        rename[f"features.{ours + 1}."] = f"features.norm{pos}."
    out = {}
    for key, value in model.state_dict().items():
        prefix = re.match(r"^features\.\d+\.", key)
        out[rename[prefix.group(0)] + key[prefix.end() :] if prefix else key] = value
    return out


def test_hrank_vgg16_layers_are_mapped_by_position(tmp_path) -> None:
    model = _randomise(create("vgg16_bn"))
    keys = _hrank_vgg_keys(model)
    assert "features.conv14.weight" in keys and "features.norm16.running_var" in keys  # HRank's names
    torch.save({"state_dict": keys, "best_prec1": 93.96}, tmp_path / "vgg_16_bn.pt")
    result = import_to_file(tmp_path / "vgg_16_bn.pt", "hrank", "vgg16_bn", tmp_path / "vgg.safetensors")
    # cfg position 3 (after the first pool) is the third conv: module 7 of our features; position 14 the
    # eleventh: module 34 (conv, BN, ReLU per layer and one module per pool).
    assert result.renamed["features.conv3.weight"] == "features.7.weight"
    assert result.renamed["features.norm14.running_var"] == "features.35.running_var"
    assert "classifier.linear1.weight" not in result.renamed  # same names in both
    _same_outputs(model, tmp_path / "vgg.safetensors")


def test_hrank_resnet110_data_parallel_linear_head_and_option_a_buffers(tmp_path) -> None:
    model = _randomise(create("resnet110"))
    # HRank's ResNet-110: `module.` (DataParallel), head named `linear`, F.pad shortcut without buffers.
    state = {
        "module." + re.sub(r"^fc\.", "linear.", k): v
        for k, v in model.state_dict().items()
        if not k.endswith(("shortcut.src", "shortcut.dst"))
    }
    torch.save({"state_dict": state}, tmp_path / "resnet_110.pt")
    result = import_to_file(tmp_path / "resnet_110.pt", "hrank", "resnet110", tmp_path / "r110.safetensors")
    assert result.renamed == {"linear.weight": "fc.weight", "linear.bias": "fc.bias"}
    assert sorted(result.filled) == [
        "layer2.0.shortcut.dst",
        "layer2.0.shortcut.src",
        "layer3.0.shortcut.dst",
        "layer3.0.shortcut.src",
    ]
    assert read_metadata(tmp_path / "r110.safetensors")["arch"]["kwargs"]["shortcut"] == "A"
    _same_outputs(model, tmp_path / "r110.safetensors")


def test_hrank_densenet40_data_parallel_names_match_the_zoo(tmp_path) -> None:
    model = _randomise(create("densenet40"))
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "d.pt")
    result = import_to_file(tmp_path / "d.pt", "hrank", "densenet40", tmp_path / "d.safetensors")
    assert result.renamed == {} and result.filled == ()
    _same_outputs(model, tmp_path / "d.safetensors")


def test_hrank_googlenet_inception_prefix_keeps_its_linear_head(tmp_path) -> None:
    model = _randomise(create("googlenet"))
    inception = ("a3", "b3", "a4", "b4", "c4", "d4", "e4", "a5", "b5")
    state = {
        re.sub(rf"^({'|'.join(inception)})\.", r"inception_\1.", k): v for k, v in model.state_dict().items()
    }
    assert "inception_a3.branch5x5.6.weight" in state
    torch.save({"state_dict": state}, tmp_path / "googlenet.pt")
    result = import_to_file(tmp_path / "googlenet.pt", "hrank", "googlenet", tmp_path / "g.safetensors")
    assert result.renamed["inception_b5.branch_pool.1.bias"] == "b5.branch_pool.1.bias"
    # `linear` → `fc` is an HRank rule too, but GoogLeNet's head is `linear` in the zoo as in HRank.
    assert "linear.weight" not in result.renamed
    _same_outputs(model, tmp_path / "g.safetensors")


def test_tpp_bare_state_dict_with_linear_head(tmp_path) -> None:
    model = _randomise(create("resnet20"))
    state = {
        "module." + re.sub(r"^fc\.", "linear.", k): v
        for k, v in model.state_dict().items()
        if not k.endswith((".src", ".dst"))
    }
    torch.save(state, tmp_path / "resnet20_tpp.pth")  # bare dict, as `torch.save(model.state_dict())`
    import_to_file(tmp_path / "resnet20_tpp.pth", "tpp", "resnet20", tmp_path / "r20.safetensors")
    _same_outputs(model, tmp_path / "r20.safetensors")


@pytest.mark.parametrize("source", ["bearpaw", "trp", "deephoyer"])
def test_bearpaw_family_downsample_becomes_option_b_shortcut(tmp_path, source: str) -> None:
    model = _randomise(create("resnet20", shortcut="B"))
    # bearpaw's checkpoint dict; DataParallel keys; `downsample`; files from 2017 have no num_batches_tracked.
    state = {
        "module." + k.replace(".shortcut.", ".downsample."): v
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}
    torch.save(
        {"epoch": 164, "state_dict": state, "best_acc": torch.tensor(91.74), "optimizer": optimizer},
        tmp_path / "model_best.pth.tar",
    )
    result = import_to_file(tmp_path / "model_best.pth.tar", source, "resnet20", tmp_path / "r20.safetensors")
    assert result.renamed["layer2.0.downsample.0.weight"] == "layer2.0.shortcut.0.weight"
    assert result.renamed["layer3.0.downsample.1.running_mean"] == "layer3.0.shortcut.1.running_mean"
    assert len(result.filled) == 19 + 2  # every BN's num_batches_tracked: 19 in the body, 2 shortcut BNs
    assert read_metadata(tmp_path / "r20.safetensors")["arch"]["kwargs"]["shortcut"] == "B"
    _same_outputs(model, tmp_path / "r20.safetensors")


def test_net_container_and_class_count_read_from_the_head(tmp_path) -> None:
    model = _randomise(create("resnet20", num_classes=100))
    # kuangliu's container; old scripts saved the accuracy as a numpy scalar (plain data: allowed)
    torch.save({"net": model.state_dict(), "acc": np.float64(68.2), "epoch": 200}, tmp_path / "ckpt.pth")
    import_to_file(
        tmp_path / "ckpt.pth", "state_dict", "resnet20", tmp_path / "r.safetensors", dataset="cifar100"
    )
    meta = read_metadata(tmp_path / "r.safetensors")
    assert meta["arch"]["kwargs"]["num_classes"] == 100
    assert meta["info"]["dataset"] == "cifar100" and meta["info"]["input_shape"] == [3, 32, 32]
    assert meta["info"]["imported"]["source"] == "state_dict"
    _same_outputs(model, tmp_path / "r.safetensors")


def test_deephoyer_masked_linear_masks_become_prunekit_masks(tmp_path) -> None:
    model = create("lenet300_100").eval()
    mask = torch.zeros(300, 784)
    mask[:, ::2] = 1  # half of fc1's weights pruned
    with torch.no_grad():
        model.fc1.weight.mul_(mask)
    state = dict(model.state_dict())
    state["fc1.mask"] = mask
    state["fc2.mask"] = torch.ones(100, 300)  # a mask that removes nothing is not kept
    torch.save(state, tmp_path / "elt_0.0_0.pth")
    result = import_to_file(
        tmp_path / "elt_0.0_0.pth", "deephoyer", "lenet300_100", tmp_path / "m.safetensors", normalize=False
    )
    assert result.masks == ("fc1.weight",)
    reloaded = prunekit.load(tmp_path / "m.safetensors")
    assert torch.equal(reloaded.prunekit_masks["fc1.weight"], mask.bool())
    assert reloaded.prunekit_info["normalize"] is False
    _same_outputs(model, tmp_path / "m.safetensors", shape=(1, 28, 28))


def test_cli_import_writes_a_model_file_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    model = _randomise(create("resnet20"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "r20.pth")
    out = tmp_path / "r20.safetensors"
    argv = [
        "import",
        str(tmp_path / "r20.pth"),
        "--from",
        "state_dict",
        "--arch",
        "resnet20",
        "--out",
        str(out),
    ]
    assert main([*argv, "--data", "cifar10"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_metadata(out)["info"]["dataset"] == "cifar10"
    _same_outputs(model, out)
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys) -> None:
    def argv(file: Path, arch: str = "resnet20", source: str = "hrank") -> list[str]:
        return [
            "import",
            str(file),
            "--from",
            source,
            "--arch",
            arch,
            "--out",
            str(tmp_path / "o.safetensors"),
        ]

    assert "no checkpoint file at" in _one_line_error(argv(tmp_path / "missing.pth"), capsys)
    (tmp_path / "junk.pth").write_bytes(bytes(range(256)) * 4)
    assert "not a readable torch checkpoint" in _one_line_error(argv(tmp_path / "junk.pth"), capsys)
    torch.save({"state_dict": create("resnet20").state_dict()}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:5000])  # a truncated download
    assert "not a readable torch checkpoint" in _one_line_error(argv(tmp_path / "cut.pth"), capsys)
    # A whole pickled model, as TPP ships its checkpoints: refused, with how to get the state dict out.
    torch.save({"model": create("resnet20"), "arch": "resnet20"}, tmp_path / "whole.pth")
    err = _one_line_error(argv(tmp_path / "whole.pth", source="tpp"), capsys)
    assert "never unpickles" in err and "CifarResNet" in err and "state_dict()" in err
    # Wrong architecture: the keys do not fit, and the message names them.
    err = _one_line_error(argv(tmp_path / "full.pth", arch="resnet32"), capsys)
    assert "does not fit --arch resnet32" in err and "missing (layer1.3.bn1.bias" in err
    err = _one_line_error(argv(tmp_path / "full.pth", arch="lenet5"), capsys)
    assert "unexpected" in err
    # Unknown names fail before the file is read (the file does not even exist here).
    assert "unknown model 'resnet21'" in _one_line_error(
        argv(tmp_path / "missing.pth", arch="resnet21"), capsys
    )
    assert main(argv(tmp_path / "full.pth", source="caffe")) == 2  # argparse: invalid choice
    assert "invalid choice" in capsys.readouterr().err
    unwritable = argv(tmp_path / "missing.pth")[:-1] + ["/proc/prunekit/x.safetensors"]
    assert "cannot create /proc/prunekit" in _one_line_error(unwritable, capsys)  # before the file is read


def test_shape_mismatch_and_non_finite_weights_are_refused(tmp_path) -> None:
    state = create("resnet20").state_dict()
    state["fc.weight"] = torch.zeros(10, 32)
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(
        CheckpointError, match=r"another shape \(fc.weight: file \(10, 32\), resnet20 \(10, 64\)\)"
    ):
        import_checkpoint(tmp_path / "narrow.pth", "state_dict", "resnet20")
    state = create("resnet20").state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(
        CheckpointError, match="non-finite outputs; non-finite tensors: layer1.0.conv1.weight"
    ):
        import_checkpoint(tmp_path / "nan.pth", "state_dict", "resnet20")
    with pytest.raises(ConfigError, match="ends in .safetensors"):
        import_to_file(tmp_path / "nan.pth", "state_dict", "resnet20", tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="unknown dataset 'cifar11'"):
        import_checkpoint(tmp_path / "nan.pth", "state_dict", "resnet20", dataset="cifar11")


def test_recipe_starts_from_an_imported_checkpoint(shared_data, tmp_path) -> None:
    from prunekit.recipes import load_recipe, run_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/deephoyer/lenet300_100_hs_mnist.yaml")
    torch.save(create("lenet300_100").state_dict(), tmp_path / "elt_0.0_0.pth")  # DeepHoyer's names
    dense = tmp_path / "dense.safetensors"
    import_to_file(tmp_path / "elt_0.0_0.pth", "deephoyer", "lenet300_100", dense, normalize=False)
    summary = run_recipe(
        recipe,
        tmp_path / "run",
        dense_checkpoint=dense,
        data_root=str(shared_data),
        epochs_scale=0.004,
        limit_train=256,
        limit_test=128,
        progress=False,
    )
    assert summary["ours"]["dense_macs"] == 266_200  # LeNet-300-100: 784·300 + 300·100 + 100·10
    assert not (tmp_path / "run" / "dense").exists()  # the imported model was the dense start
    # A file of another architecture, or the raw checkpoint itself, is refused before the run folder exists.
    import_to_file(tmp_path / "elt_0.0_0.pth", "state_dict", "lenet300_100", tmp_path / "x.safetensors")
    torch.save(create("lenet5").state_dict(), tmp_path / "lenet5.pth")
    import_to_file(tmp_path / "lenet5.pth", "deephoyer", "lenet5", tmp_path / "l5.safetensors")
    with pytest.raises(ConfigError, match="prunes lenet300_100, but --dense .* holds lenet5"):
        run_recipe(recipe, tmp_path / "no1", dense_checkpoint=tmp_path / "l5.safetensors")
    with pytest.raises(CheckpointError, match="becomes a model file with `prunekit import"):
        run_recipe(recipe, tmp_path / "no2", dense_checkpoint=tmp_path / "elt_0.0_0.pth")
    assert not (tmp_path / "no1").exists() and not (tmp_path / "no2").exists()
