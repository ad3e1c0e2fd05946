"""Recipes: every shipped file is valid, schedules shorten exactly, a real-data run reports side by side."""

import json
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.models import list_models
from prunekit.recipes import load_recipe, run_recipe, stage_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes_for_every_method_with_published_numbers() -> None:
    methods = {load_recipe(p).method for p in RECIPES}
    assert {"hrank", "deephoyer"} <= methods


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_valid(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.arch in list_models()
    create_method(recipe.method, **recipe.options)  # options are the method's own, with valid values
    for stage in (recipe.dense if "epochs" in recipe.dense else None, recipe.sparsify, recipe.finetune):
        if stage is not None:
            assert stage_config(stage).epochs == stage["epochs"]
    assert recipe.published, "a recipe records the published numbers it should reach"


def test_stage_config_shortens_epochs_milestones_and_piecewise() -> None:
    cfg = stage_config({"epochs": 150, "lr": 0.01, "schedule": "multistep", "milestones": [50, 100]}, 0.1)
    assert (cfg.epochs, list(cfg.milestones)) == (15, [5, 10])
    cfg = stage_config(
        {"epochs": 120, "schedule": "piecewise", "piecewise": "0:0.01,60:0.001,90:0.0001"}, 0.5
    )
    assert (cfg.epochs, cfg.piecewise) == (60, "0:0.01,30:0.001,45:0.0001")
    assert stage_config({"epochs": 3, "per_stage": True, "select": "best_test"}, 0.01).epochs == 1


def test_recipe_runs_on_real_mnist_and_reports_beside_the_published_row(shared_data, tmp_path) -> None:
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/deephoyer/lenet300_100_hs_mnist.yaml")
    summary = run_recipe(
        recipe,
        tmp_path / "run",
        data_root=str(shared_data),
        epochs_scale=0.004,
        limit_train=2000,
        limit_test=1000,
        progress=False,
    )
    assert summary["shortened"] and summary["published"] == recipe.published
    ours = summary["ours"]
    assert 0 < ours["sparsity"]["pruned"] < ours["sparsity"]["total"]
    assert ours["dense_top1"] > 60  # one epoch of 2,000 real MNIST images
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Shortened run" in report and "weights + biases pruned" in report
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["recipe"] == recipe.name
    assert (tmp_path / "run" / "dense" / "model.safetensors").is_file()


def test_recipe_errors(tmp_path, capsys) -> None:
    hrank = Path(__file__).resolve().parents[1] / "recipes/hrank/resnet56_cifar10_93.17.yaml"
    assert main(["run", str(hrank), "--out", str(tmp_path / "x")]) == 2
    assert "pass --dense PATH" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {arch: lenet5}\ndata: {dataset: mnist}\ndense: {epochs: 1}\n"
        "method: {name: l1}\nfinetuning: {epochs: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"unknown keys \['finetuning'\]"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    good = load_recipe(Path(__file__).resolve().parents[1] / "recipes/deephoyer/lenet5_hs_mnist.yaml")
    with pytest.raises(ConfigError, match="epochs-scale"):
        run_recipe(good, tmp_path / "y", epochs_scale=2.0)
