"""DeepHoyer on real MNIST, CPU: dense → regularised → pruned → masked fine-tune, beside the published rows.

Runs one or more `recipes/deephoyer/*_mnist.yaml` end to end. Recipes of the same architecture share one
dense model: it is trained once, saved with `prunekit.save` (under `--cache`, reused by later runs with the
same dense schedule) and reloaded for every regulariser. Each regulariser then trains with
``loss + decay · Σ R(W)``, prunes with the recipe's threshold rule (removing dead channels physically when
the recipe is structural), fine-tunes with the zeros frozen, and is reported next to the recipe's
`published:` numbers (a third-party reproduction; the paper's own tables could not be retrieved).

Counts are against the ORIGINAL dense layer sizes, so a structural run that removed neurons physically is
not flattered by the smaller denominators: nonzero % per layer = nonzero weights / dense weights of that
layer; total = nonzero weights+biases / dense weights+biases (the DeepHoyer MNIST convention); compression
= dense total / nonzero. "alive" = output neurons/channels with any nonzero weight (= what remains after
physical removal).

`--epochs-scale` shortens every stage (at least one epoch each); `--dense-epochs`, `--sparsify-epochs`,
`--finetune-epochs` set a stage's epochs outright. The schedule actually run is printed with the results.

    python benchmarks/deephoyer_mnist.py recipes/deephoyer/lenet300_100_{hoyer,hs}_mnist.yaml \
        --dense-epochs 4 --sparsify-epochs 4 --finetune-epochs 1 --json /tmp/dh.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

import prunekit
from prunekit.data import DeviceLoader, load_dataset
from prunekit.measure.sparsity import SparsityReport, sparsity_report
from prunekit.methods.base import create_method
from prunekit.methods.deephoyer import DeepHoyer
from prunekit.models import create
from prunekit.surgery.masks import attach
from prunekit.train import TrainConfig, evaluate, fit

STAGES = ("dense", "sparsify", "finetune")


def stage_config(stage: dict[str, Any], scale: float, epochs: int | None) -> TrainConfig:
    cfg = dict(stage)
    cfg["epochs"] = epochs if epochs is not None else max(1, round(cfg["epochs"] * scale))
    cfg.setdefault("amp", "off")
    cfg.setdefault("channels_last", "off")
    return TrainConfig.from_dict(cfg)


def counts(report: SparsityReport, dense: SparsityReport) -> dict[str, Any]:
    """Per-layer and total nonzero counts of `report` against the dense model's layer sizes."""
    sizes = {layer.name: layer for layer in dense.layers}
    layers = {}
    for layer in report.layers:
        ref = sizes[layer.name]
        layers[layer.name] = {
            "nonzero": layer.nonzero,
            "dense": ref.total,
            "nonzero_pct": 100.0 * layer.nonzero / ref.total,
            "bias_nonzero": layer.bias_nonzero,
            "alive_out": layer.nonzero_filters,
            "dense_out": ref.filters,
            "alive_in": layer.nonzero_in_channels,
            "dense_in": ref.in_channels,
            "shape_after": list(layer.shape),
        }
    nonzero = report.nonzero
    return {
        "layers": layers,
        "nonzero": nonzero,
        "dense_total": dense.total,
        "nonzero_pct": 100.0 * nonzero / dense.total,
        "pruned_pct": 100.0 * (1 - nonzero / dense.total),
        "compression": dense.total / nonzero if nonzero else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", type=Path, nargs="+")
    parser.add_argument("--data-root", default="/work/shared/data", help="folder holding mnist/")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs")
    for stage in STAGES:
        parser.add_argument(f"--{stage}-epochs", type=int, help=f"epochs of the {stage} stage (overrides)")
    parser.add_argument("--cache", type=Path, default=Path("runs/deephoyer_mnist"), help="dense models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-train", type=int, help="first N training images only (smoke runs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=220)

    recipes = [yaml.safe_load(path.read_text()) for path in args.recipes]
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for recipe in recipes:
        by_arch.setdefault(recipe["model"]["arch"], []).append(recipe)

    results: dict[str, Any] = {"epochs_scale": args.epochs_scale, "threads": args.threads, "archs": {}}
    datasets: dict[str, Any] = {}
    for arch, group in by_arch.items():
        first = group[0]
        dense_cfg = stage_config(first["dense"], args.epochs_scale, args.dense_epochs)
        data = first["data"]
        for recipe in group[1:]:
            if (
                recipe["data"] != data
                or stage_config(recipe["dense"], args.epochs_scale, args.dense_epochs) != dense_cfg
            ):
                raise SystemExit(f"{recipe['name']}: dense stage or data differ from {first['name']}")
        if data["dataset"] not in datasets:
            datasets[data["dataset"]] = (
                load_dataset(data["dataset"], "train", root=args.data_root, download=False),
                load_dataset(data["dataset"], "test", root=args.data_root, download=False),
            )
        train_set, test_set = datasets[data["dataset"]]
        if args.limit_train:
            train_set = train_set.subset(slice(0, args.limit_train))
        normalize = data.get("normalize", True)
        train = DeviceLoader(
            train_set, dense_cfg.batch_size, train=True, normalize=normalize, seed=dense_cfg.seed
        )
        test = DeviceLoader(test_set, data.get("eval_batch_size", 1000), train=False, normalize=normalize)
        calib = next(iter(test))[0][:64]

        key = hashlib.sha1(
            json.dumps([arch, data, dense_cfg.to_dict(), args.limit_train], sort_keys=True).encode()
        ).hexdigest()[:8]
        dense_path = args.cache / f"{arch}_dense_{dense_cfg.epochs}ep_{key}.safetensors"
        if dense_path.is_file():
            dense_model = prunekit.load(dense_path)
            dense_top1 = evaluate(dense_model, test)["top1"]
            dense_wall = 0.0
            console.print(f"[bold]{arch}[/]: dense model reused from {dense_path} ({dense_top1:.2f} %)")
        else:
            dense_model = create(arch, num_classes=first["model"]["num_classes"])
            fitted = fit(dense_model, train, test, dense_cfg, progress=False)
            dense_top1, dense_wall = fitted.final_top1, fitted.wall_time_s
            prunekit.save(dense_model, dense_path, info={"top1": dense_top1, "train": dense_cfg.to_dict()})
            console.print(
                f"[bold]{arch}[/]: dense {dense_cfg.epochs} ep → {dense_top1:.2f} % ({dense_wall:.0f} s)"
            )
        dense_report = sparsity_report(dense_model)
        arch_result: dict[str, Any] = {
            "dense_top1": dense_top1,
            "dense_wall_s": dense_wall,
            "dense_schedule": dense_cfg.to_dict(),
            "dense_recipe_epochs": first["dense"]["epochs"],
            "dense_path": str(dense_path),
            "published_dense_top1": first.get("published", {}).get("dense_top1"),
            "published_dense_top1_third_party": first.get("published", {}).get("dense_top1_third_party"),
            "runs": [],
        }
        for recipe in group:
            configs = {
                stage: stage_config(recipe[stage], args.epochs_scale, getattr(args, f"{stage}_epochs"))
                for stage in ("sparsify", "finetune")
            }
            method = create_method(recipe["method"]["name"], **recipe["method"]["options"])
            assert isinstance(method, DeepHoyer)
            model = prunekit.load(dense_path)
            started = time.perf_counter()
            run: dict[str, Any] = {
                "recipe": recipe["name"],
                "options": dict(recipe["method"]["options"]),
                "schedule": {stage: cfg.to_dict() for stage, cfg in configs.items()},
                "recipe_epochs": {stage: recipe[stage]["epochs"] for stage in ("sparsify", "finetune")},
            }
            published = recipe.get("published", {})
            run["published"] = published.get("std_ratio" if method.options.threshold == "std" else "", {})
            try:
                regularised = fit(model, train, test, configs["sparsify"], method=method, progress=False)
                run["regularised_top1"] = regularised.final_top1
                result = method.prune(model, calib)
                run["pruned_top1"] = evaluate(result.model, test)["top1"]
                run["thresholds"] = result.thresholds
                run["plan_widths"] = {name: len(kept) for name, kept in result.plan.items()}
                with attach(result.model, result.masks) as handle:
                    tuned = fit(result.model, train, test, configs["finetune"], method=handle, progress=False)
                run["finetuned_top1"] = tuned.final_top1
                run["finetuned_best_top1"] = tuned.best_top1
                run["sparsity"] = counts(sparsity_report(result.model), dense_report)
            except prunekit.PrunekitError as exc:  # e.g. a threshold that prunes a whole layer
                run["error"] = f"{type(exc).__name__}: {exc}"
            run["wall_s"] = time.perf_counter() - started
            arch_result["runs"].append(run)
            brief = {k: v for k, v in run.items() if k.endswith(("top1", "error", "wall_s"))}
            console.print(f"  {recipe['name']}: {json.dumps(brief)}")
        results["archs"][arch] = arch_result
        console.print(arch_table(arch, arch_result))
        if args.json:  # after every architecture, so a later crash loses nothing
            args.json.write_text(json.dumps(results, indent=2))


def arch_table(arch: str, res: dict[str, Any]) -> Table:
    dense_cfg = res["dense_schedule"]
    pub = res["published_dense_top1"]
    third = res["published_dense_top1_third_party"]
    title = (
        f"DeepHoyer {arch} on MNIST — dense {res['dense_top1']:.2f} % after {dense_cfg['epochs']} ep "
        f"(recipe {res['dense_recipe_epochs']}; paper ≈{pub}"
        + (f", third-party {third}" if third else "")
        + ")"
    )
    table = Table(title=title, caption="published = third-party reproduction, full schedule, std-ratio rule")
    headers = (
        "regulariser",
        "decay",
        "s",
        "epochs reg/FT",
        "top-1 pruned",
        "top-1 FT",
        "nonzero % per layer",
        "alive in → out per layer",
        "total nz %",
        "×",
        "published top-1 / pruned %",
    )
    for header in headers:
        table.add_column(header, justify="left" if header in ("regulariser",) else "right")
    for run in res["runs"]:
        opts, pub_row = run["options"], run["published"]
        epochs = f"{run['schedule']['sparsify']['epochs']}/{run['schedule']['finetune']['epochs']}"
        published = f"{pub_row.get('top1', '-')} / {pub_row.get('pruned_pct', '-')}"
        if "error" in run:
            table.add_row(
                opts["regularizer"],
                f"{opts['decay']:g}",
                f"{opts['sensitivity']:g}",
                epochs,
                run["error"][:60],
                "-",
                "-",
                "-",
                "-",
                "-",
                published,
            )
            continue
        sp = run["sparsity"]
        per_layer = " / ".join(f"{layer['nonzero_pct']:.2f}" for layer in sp["layers"].values())
        layers = list(sp["layers"].values())
        alive = f"in {layers[0]['alive_in']}/{layers[0]['dense_in']} → " + " / ".join(
            f"{layer['alive_out']}/{layer['dense_out']}" for layer in layers
        )
        rate = f"{sp['compression']:.1f}" if sp["compression"] else "∞"
        table.add_row(
            opts["regularizer"] + (" (struct)" if opts.get("structural") else ""),
            f"{opts['decay']:g}",
            f"{opts['sensitivity']:g}",
            epochs,
            f"{run['pruned_top1']:.2f}",
            f"{run['finetuned_top1']:.2f}",
            per_layer,
            alive,
            f"{sp['nonzero_pct']:.2f}",
            rate,
            published,
        )
    return table


if __name__ == "__main__":
    main()
