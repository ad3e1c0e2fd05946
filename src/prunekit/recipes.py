"""Recipes: a paper's table row as a YAML file, run end to end by `prunekit run`.

Layout (every key but `published` drives the run):

    name: <method>_resnet56_cifar10_<top1>
    model: {arch: resnet56, num_classes: 10, ...}        # zoo architecture + constructor arguments
    data: {dataset: cifar10, normalize: true, eval_batch_size: 1000}
    dense: {epochs: 250, batch_size: 100, lr: ...}        # train the baseline, or
    dense: {checkpoint: authors, top1: 93.26}             #   start from a pretrained file (--dense PATH)
    method: {name: <method>, options: {rates: "...", ...}}  # any registered method and its options
    sparsify: {epochs: ..., ...}                          # optional regularised training before pruning
    finetune: {epochs: ..., per_stage: true, ...}         # per_stage: epochs of each layer-wise stage
    published: {top1: ..., flops: ..., params: ...}       # the paper's numbers, shown beside ours

`--epochs-scale` shortens every schedule (epochs and milestones) for smoke runs; the summary records the
scale so shortened numbers are never mistaken for the recipe's.

A run writes `dense/` (the baseline's train run), `pruned/` (the prune run) and, in its root, `config.yaml`
(the recipe as it was read and the options), `summary.json` and `report.md`. `--resume` continues an
interrupted run: a stage whose folder holds a complete summary is kept, an interrupted one continues from
its last finished epoch (`prunekit train/prune --resume`), and the root summary and report are made from
the stages' files, so they equal an uninterrupted run's. A recipe or an option changed since the run
started is refused, naming what differs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit.compare import finished
from prunekit.errors import ConfigError
from prunekit.pipeline import DataSpec, PruneSpec, prune_run, train_run
from prunekit.report import RunFolder
from prunekit.report.run_folder import open_run
from prunekit.train import TrainConfig
from prunekit.train.trainer_state import has_checkpoint

_TOP_KEYS = {"name", "model", "data", "dense", "method", "sparsify", "finetune", "published"}
_DATA_KEYS = {"dataset", "normalize", "eval_batch_size", "root", "pretrained"}
# Stage keys that describe the recipe rather than the optimiser.
_STAGE_META = {"per_stage", "select", "checkpoint", "top1", "pretrained"}


@dataclass
class Recipe:
    path: Path
    name: str
    arch: str
    model_kwargs: dict[str, Any]
    data: dict[str, Any]
    dense: dict[str, Any]
    method: str
    options: dict[str, Any]
    sparsify: dict[str, Any] | None
    finetune: dict[str, Any] | None
    published: dict[str, Any] = field(default_factory=dict)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping with keys {', '.join(sorted(_TOP_KEYS))}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"recipe {path}: unknown keys {sorted(unknown)}; valid keys: {sorted(_TOP_KEYS)}")
    for key in ("model", "data", "dense", "method"):
        if not isinstance(raw.get(key), dict):
            raise ConfigError(f"recipe {path}: `{key}` is required and must be a mapping")
    model = dict(raw["model"])
    if "arch" not in model:
        raise ConfigError(f"recipe {path}: model.arch is required")
    data = dict(raw["data"])
    if "dataset" not in data or set(data) - _DATA_KEYS:
        raise ConfigError(f"recipe {path}: data needs `dataset` and may hold only {sorted(_DATA_KEYS)}")
    method = dict(raw["method"])
    if "name" not in method:
        raise ConfigError(f"recipe {path}: method.name is required")
    return Recipe(
        path=path,
        name=str(raw.get("name") or path.stem),
        arch=model.pop("arch"),
        model_kwargs=model,
        data=data,
        dense=dict(raw["dense"]),
        method=method["name"],
        options=dict(method.get("options") or {}),
        sparsify=dict(raw["sparsify"]) if raw.get("sparsify") else None,
        finetune=dict(raw["finetune"]) if raw.get("finetune") else None,
        published=dict(raw.get("published") or {}),
    )


def stage_config(stage: dict[str, Any], scale: float = 1.0) -> TrainConfig:
    """A recipe stage as a TrainConfig, its schedule shortened by `scale` (never below one epoch)."""
    values = {k: v for k, v in stage.items() if k not in _STAGE_META}
    if scale != 1.0:
        epochs = int(values.get("epochs", 1))
        values["epochs"] = max(1, round(epochs * scale))
        if values.get("milestones"):
            values["milestones"] = sorted({max(1, round(m * scale)) for m in values["milestones"]})
        if values.get("piecewise"):
            parts = [p.split(":") for p in str(values["piecewise"]).split(",")]
            values["piecewise"] = ",".join(f"{round(int(e) * scale)}:{lr}" for e, lr in parts)
    return TrainConfig.from_dict(values)


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    dense_checkpoint: str | Path | None = None,
    data_root: str | None = None,
    epochs_scale: float = 1.0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = True,
    device: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    resume: bool = False,
    threads: int | None = None,
    config_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """dense (trained or given) → prune with the recipe's method → summary beside the published numbers.

    `resume` continues the run in `out`, which must have been started with the same recipe (contents) and
    options (`device`, `threads`, `data_root`, `download` and `progress` may change: they say where it
    runs, not what it computes); `config_record` is stored with the run's config (the CLI's options)."""
    if not 0 < epochs_scale <= 1:
        raise ConfigError(f"--epochs-scale must be in (0, 1], got {epochs_scale:g}")
    # A shortened run shortens the sparsify stage a method declares in steps too (TPP's λ ramp).
    spec = PruneSpec(recipe.method, options=recipe.options, step_scale=epochs_scale)
    spec.build()  # a mistyped method or option fails now, not after the dense stage
    # So do the stages' keys and values, the data options, the baseline's source and the run folder.
    for stage in (recipe.dense if "epochs" in recipe.dense else None, recipe.finetune, recipe.sparsify):
        if stage is not None:
            stage_config(stage, epochs_scale)
    data = DataSpec(
        recipe.data["dataset"],
        root=data_root,
        download=download,
        eval_batch_size=recipe.data.get("eval_batch_size"),
        limit_train=limit_train,
        limit_test=limit_test,
        normalize=bool(recipe.data.get("normalize", True)),
    )
    data.check()
    if dense_checkpoint is None and "epochs" not in recipe.dense:
        source = recipe.dense.get("checkpoint") or recipe.dense.get("pretrained") or "a pretrained model"
        raise ConfigError(
            f"recipe {recipe.name} starts from {source}'s pretrained baseline, which prunekit cannot "
            "download; pass --dense PATH (a prunekit model file: from `prunekit train`, or the authors' "
            "checkpoint converted with `prunekit import`)"
        )
    if dense_checkpoint is not None:
        check_dense(recipe, dense_checkpoint)
    run = open_run(out, overwrite=overwrite, resume=resume)
    record = {
        "recipe": str(recipe.path),
        "name": recipe.name,
        "epochs_scale": epochs_scale,
        "limit_train": limit_train,
        "limit_test": limit_test,
    }
    dense_file = Path(dense_checkpoint or run.path / "dense" / "model.safetensors")
    config = {
        **(config_record or {}),
        **record,
        "dense": str(dense_checkpoint) if dense_checkpoint is not None else None,
        "dense_checkpoint": str(dense_file),
        "data_root": data_root,
        "download": download,
        "recipe_content": _recipe_record(recipe),
    }
    if resume:
        _check_resumable(run, config)
    stages = _Stages(recipe, data, epochs_scale, record, device, threads, progress)
    with run.recording(config, resume=resume):
        if dense_checkpoint is None:
            _dense_stage(stages, run.path / "dense")
        result = _prune_stage(stages, run.path / "pruned", spec, dense_file)
        summary = _summary(recipe, result, epochs_scale, limit_train)
        run.write_summary(summary)
        run.write_text("report.md", _recipe_report(recipe, summary))
        return summary


def _recipe_record(recipe: Recipe) -> dict[str, Any]:
    """The recipe as its file lays it out (what the run's config.yaml records, and a resume compares)."""
    return {
        "name": recipe.name,
        "model": {"arch": recipe.arch, **recipe.model_kwargs},
        "data": recipe.data,
        "dense": recipe.dense,
        "method": {"name": recipe.method, "options": recipe.options},
        "sparsify": recipe.sparsify,
        "finetune": recipe.finetune,
        "published": recipe.published,
    }


#: What a resumed run must share with the run it continues (the rest says where it runs): config key → flag.
_SAME_ON_RESUME = {
    "recipe": "the recipe",
    "dense": "--dense",
    "epochs_scale": "--epochs-scale",
    "limit_train": "--limit-train",
    "limit_test": "--limit-test",
}


def _check_resumable(run: RunFolder, config: dict[str, Any]) -> None:
    """`--resume` continues an unfinished recipe run started with this recipe and these options; anything
    else is refused before any work, naming what differs."""
    recorded = run.read_config()
    where = run.path / "config.yaml"
    if "recipe_content" not in recorded:
        command = recorded.get("command")
        kind = f"a {command} run" if command else "a run of another command (or an older prunekit)"
        raise ConfigError(
            f"{run.path} holds {kind}, not a recipe run that `prunekit run --resume` can continue; start "
            "a new run with another --out"
        )
    summary = run.path / "summary.json"
    if summary.is_file():
        try:
            status = json.loads(summary.read_text(encoding="utf-8")).get("status")
        except json.JSONDecodeError:
            status = None  # torn by a crash mid-write (writes are atomic, so only by hand): not finished
        if status == "complete":
            raise ConfigError(
                f"the run in {run.path} already finished (summary.json says complete): there is nothing to "
                f"resume; `prunekit report {run.path}` shows it, --overwrite runs it again"
            )
    now = _as_recorded(config)
    for key, flag in _SAME_ON_RESUME.items():
        if recorded.get(key) != now[key]:
            raise ConfigError(
                f"{flag} {_shown(now[key])} differs from the run being resumed ({flag} "
                f"{_shown(recorded.get(key))} in {where}); a resumed run keeps its options: give the same, "
                "or start a new run with another --out"
            )
    changed = _differences(recorded["recipe_content"], now["recipe_content"])
    if changed:
        raise ConfigError(
            f"recipe {now['recipe']} changed since the run in {run.path} started: {'; '.join(changed)}; a "
            "resumed run keeps its recipe: restore those values, or start a new run with another --out"
        )


def _as_recorded(value: Any) -> Any:
    """`value` as config.yaml reads back (tuples as lists, paths as strings)."""
    plain = json.loads(json.dumps(value, default=str))
    return yaml.safe_load(yaml.safe_dump(plain, sort_keys=False))


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _differences(then: Any, now: Any, where: str = "") -> list[str]:
    """Every key path whose value differs, with both values: `finetune.epochs: 2 in the run, 3 now`."""
    if isinstance(then, dict) and isinstance(now, dict):
        return [
            line
            for key in [*then, *(k for k in now if k not in then)]
            for line in _differences(then.get(key), now.get(key), f"{where}.{key}" if where else str(key))
        ]
    return [] if then == now else [f"{where}: {then!r} in the run, {now!r} now"]


@dataclass(frozen=True)
class _Stages:
    """What the stages of one recipe run share: the recipe, the data, the schedules' scale, the record their
    configs start with, and where they run."""

    recipe: Recipe
    data: DataSpec
    epochs_scale: float
    record: dict[str, Any]
    device: str | None
    threads: int | None
    progress: bool | None


def _dense_stage(stages: _Stages, folder: Path) -> None:
    """Train the baseline into `folder`; a finished one (a resumed run) is kept, an interrupted one goes on
    from its last finished epoch, and one stopped before its first epoch ended starts again."""
    if finished(folder) is not None:
        return
    resume = has_checkpoint(folder)
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    recipe = stages.recipe
    dense_cfg = stage_config(recipe.dense, stages.epochs_scale)
    train_run(
        recipe.arch,
        dataclasses.replace(stages.data, batch_size=int(recipe.dense.get("batch_size", 128))),
        dense_cfg,
        folder,
        model_kwargs=recipe.model_kwargs,
        resume=resume,
        device=stages.device,
        threads=stages.threads,
        progress=stages.progress,
        config_record={**stages.record, "stage": "dense", "train": dense_cfg.to_dict()},
    )


def _prune_stage(stages: _Stages, folder: Path, spec: PruneSpec, dense_file: Path) -> dict[str, Any]:
    """Prune (sparsify, prune, fine-tune) into `folder`; returns its summary as written. A finished stage
    is kept; an interrupted one continues as `prunekit prune --resume` does (its sparsify and fine-tune
    from their last finished epoch, the deterministic steps between them again)."""
    summary = finished(folder)
    if summary is not None:
        return summary
    resume = (folder / "config.yaml").is_file()
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    recipe, scale = stages.recipe, stages.epochs_scale
    batch = (recipe.finetune or recipe.sparsify or recipe.dense).get("batch_size", 128)
    prune_run(
        dense_file,
        spec,
        dataclasses.replace(stages.data, batch_size=int(batch)),
        folder,
        sparsify=stage_config(recipe.sparsify, scale) if recipe.sparsify else None,
        finetune=stage_config(recipe.finetune, scale) if recipe.finetune else None,
        resume=resume,
        device=stages.device,
        threads=stages.threads,
        progress=stages.progress,
        config_record={**stages.record, "stage": "prune", "method": recipe.method, "options": recipe.options},
    )
    # Read back rather than returned: a kept stage and a fresh one give the summary the same JSON form.
    return RunFolder(folder).read_summary()


def _summary(
    recipe: Recipe, result: dict[str, Any], epochs_scale: float, limit_train: int | None
) -> dict[str, Any]:
    return {
        "status": "complete",
        "kind": "recipe",
        "recipe": recipe.name,
        "epochs_scale": epochs_scale,
        "shortened": epochs_scale != 1.0 or limit_train is not None,
        "published": recipe.published,
        "ours": {
            "dense_top1": result["dense"]["top1"],
            "top1": result["pruned"]["top1"],
            "best_top1": result["pruned"].get("best_top1"),
            "top1_before_finetune": result["pruned"]["top1_before_finetune"],
            "macs": result["pruned"]["macs"],
            "params": result["pruned"]["params"],
            "dense_macs": result["dense"]["macs"],
            "mac_speedup": result["mac_speedup"],
            **({recipe.method: result[recipe.method]} if recipe.method in result else {}),
            **({"sparsity": result["sparsity"]} if result.get("sparsity") else {}),
        },
    }


def check_dense(recipe: Recipe, path: str | Path) -> None:
    """`--dense` must be a prunekit model file of the recipe's architecture; a checkpoint the authors
    released becomes one with `prunekit import`. Checked before the run folder exists."""
    from prunekit import model_file
    from prunekit.errors import CheckpointError

    try:
        arch = model_file.read_metadata(path)["arch"] or {}
    except CheckpointError as exc:
        raise CheckpointError(
            f"--dense: {exc}. A checkpoint released with a paper becomes a model file with `prunekit import "
            f"{path} --from SOURCE --arch {recipe.arch} --out dense.safetensors`"
        ) from None
    if arch.get("name") != recipe.arch:
        raise ConfigError(
            f"recipe {recipe.name} prunes {recipe.arch}, but --dense {path} holds "
            f"{arch.get('name') or 'a user model'}"
        )
    kwargs = arch.get("kwargs") or {}
    clash = [
        f"{k}: recipe {v!r}, file {kwargs[k]!r}"
        for k, v in recipe.model_kwargs.items()
        if k in kwargs and kwargs[k] != v
    ]
    if clash:
        raise ConfigError(
            f"--dense {path} was built differently from recipe {recipe.name}: {'; '.join(clash)}"
        )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _recipe_report(recipe: Recipe, summary: dict[str, Any]) -> str:
    ours, pub = summary["ours"], summary["published"]
    shortened = (
        f"**Shortened run** (epochs × {summary['epochs_scale']:g}"
        + (", subset of the data" if summary["shortened"] and summary["epochs_scale"] == 1.0 else "")
        + "): not comparable to the published row."
        if summary["shortened"]
        else "Full schedule."
    )
    rows = [
        ("dense top-1 %", f"{ours['dense_top1']:.2f}"),
        ("pruned top-1 % (after fine-tuning: last epoch)", f"{ours['top1']:.2f}"),
        ("pruned top-1 % (after fine-tuning: best epoch)", _pct(ours.get("best_top1"))),
        ("pruned top-1 % (before fine-tuning)", f"{ours['top1_before_finetune']:.2f}"),
        ("MACs (conv + linear)", f"{ours['macs']:,} ({ours['mac_speedup']:.2f}× fewer than dense)"),
        ("params (conv + linear)", f"{ours['params']:,}"),
    ]
    if "sparsity" in ours:
        sp = ours["sparsity"]
        rows.append(("weights + biases pruned", f"{100 * sp['pruned'] / sp['total']:.2f} %"))
    details = ours.get(recipe.method) or {}
    rows += [
        (f"{recipe.method} {k}", f"{v:,}" if isinstance(v, int) else str(v))
        for k, v in details.items()
        if isinstance(v, (int, float, str))
    ]
    lines = [
        f"# Recipe {recipe.name}",
        "",
        f"Source: `{recipe.path}`. {shortened}",
        "",
        "| ours | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += [
        "",
        "Published (as recorded in the recipe):",
        "",
        "```yaml",
        yaml.safe_dump(pub, sort_keys=False, allow_unicode=True, width=110).rstrip(),
        "```",
        "",
        "Per-stage details: the `dense/` and `pruned/` run folders.",
        "",
    ]
    return "\n".join(lines)
