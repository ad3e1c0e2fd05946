"""`prunekit compare`: every method at one MAC budget, from one dense model, with one fine-tuning recipe.

ShrinkBench's reporting rules (`specs/landscape.md` §4): the same baseline, the same budget, the same
fine-tuning, several seeds, theoretical speed-up and measured latency side by side. The dense model is
trained (or given) once; each method runs with its declared default schedule (a sparsify stage for the
regularisers, one-shot for criteria), its knob searched by the shared budget search to land on the MAC
budget; every row is fine-tuned with the same recipe. Rows live in their own run folders
(``rows/macs<budget>/<method>/seed<k>``): an interrupted compare continues where it stopped, and finished
rows are never rerun. At the end the dense model and one model per (budget, method) are timed interleaved
in this process, so their latencies are comparable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit import model_file
from prunekit.errors import ConfigError, PrunekitError
from prunekit.measure.timing import LatencyStats, compare_latency
from prunekit.methods import Schedule, create_method, list_methods, method_class
from prunekit.methods.selection import Selection
from prunekit.models import list_models
from prunekit.pipeline import DataSpec, PruneSpec, prune_run, train_run
from prunekit.report.method_comparison import MethodRow, write_comparison
from prunekit.report.run_folder import RunFolder, open_run
from prunekit.train import TrainConfig


@dataclass(frozen=True)
class CompareSpec:
    """What to compare: methods (registry names), MAC budgets (fractions of the dense model's MACs),
    seeds, and the one fine-tuning recipe every row gets. `sparsify_epochs` overrides the length of every
    method's own sparsify stage (None: each method's declared schedule; methods that declare their length
    in steps keep it)."""

    methods: tuple[str, ...]
    budgets: tuple[float, ...]
    finetune: TrainConfig
    seeds: tuple[int, ...] = (0,)
    sparsify_epochs: int | None = None
    calib_images: int | None = None
    latency_batches: tuple[int, ...] = (1, 64)
    demo_schedules: bool = False  # each method's short `demo` schedule instead of its default `schedule`
    #: Per-method options over its schedule's (``{"tpp": {"reg_granularity": 0.01}}``): one method's
    #: settings changed for every budget and seed.
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self) -> None:
        """Everything a compare needs, checked before any data is loaded or model trained."""
        if not self.methods:
            raise ConfigError("give at least one method to compare (--methods all, or a list)")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods names a method twice: {', '.join(self.methods)}")
        if not self.budgets:
            raise ConfigError("give at least one MAC budget (--budget 0.5)")
        for b in self.budgets:
            if not 0 < b < 1:
                raise ConfigError(f"--budget {b:g} must be a fraction of the dense MACs in (0, 1)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"give one or more distinct seeds, got {list(self.seeds)}")
        if self.sparsify_epochs is not None and self.sparsify_epochs < 0:
            raise ConfigError(f"--sparsify-epochs must be >= 0, got {self.sparsify_epochs}")
        if self.calib_images is not None and self.calib_images < 1:
            raise ConfigError(f"--calib-images must be at least 1, got {self.calib_images}")
        if any(b < 1 for b in self.latency_batches):
            raise ConfigError(f"latency batch sizes must be >= 1, got {list(self.latency_batches)}")
        for name in self.method_options:
            if name not in self.methods:
                raise ConfigError(f"--option names method {name!r}, which is not in --methods")
        for name in self.methods:
            for budget in self.budgets:
                self.row_spec(name, budget).build()  # unknown methods and options, budget syntax
            if self.schedule(name) is None:
                raise ConfigError(f"method {name!r} declares no demo schedule; leave it out of --methods")
            probe = create_method(name, Selection.of(target_macs=0.5), **self.options(name))
            declared = probe.sparsify_steps(1)
            if self.sparsify_epochs is not None and declared is not None and name not in self.method_options:
                raise ConfigError(
                    f"--sparsify-epochs cannot shorten {name!r}: its own schedule sets its stage "
                    f"({declared:,} steps); shorten it with --option {name}.KEY=VALUE (`prunekit prune "
                    f"--method {name} --help` lists the schedule's options) or leave it out of --methods"
                )
            kind = probe.budget_kind()
            if kind != "macs":
                raise ConfigError(
                    f"method {name!r} with its default schedule cannot meet a MAC budget (its budget counts "
                    f"{kind or 'nothing'}); leave it out of --methods"
                )

    def schedule(self, name: str) -> Schedule | None:
        cls = method_class(name)
        return cls.demo if self.demo_schedules else cls.schedule

    def options(self, name: str) -> dict[str, Any]:
        schedule = self.schedule(name)
        return {**(schedule.options if schedule is not None else {}), **self.method_options.get(name, {})}

    def row_spec(self, name: str, budget: float) -> PruneSpec:
        return PruneSpec(name, options=self.options(name), target_macs=budget, calib_images=self.calib_images)

    def sparsify(self, name: str, seed: int) -> TrainConfig | None:
        """The sparsify stage of `name`: its declared schedule, its length overridden by `sparsify_epochs`."""
        schedule = self.schedule(name)
        if schedule is None or not method_class(name).needs_sparsify():
            return None
        probe = create_method(name, Selection.of(target_macs=0.5), **self.options(name))
        # A stage set in steps (TPP, GReg) keeps its declared switch: its options set its length, and any
        # other epoch count is refused by `pipeline.sparsify_config` (`check` names the options to use).
        in_steps = probe.sparsify_steps(1) is not None
        epochs = (
            schedule.sparsify_epochs if self.sparsify_epochs is None or in_steps else self.sparsify_epochs
        )
        if epochs <= 0:
            return None
        base = dataclasses.replace(self.finetune, epochs=epochs, seed=seed).to_dict()
        return TrainConfig.from_dict({**base, **schedule.sparsify})


def parse_methods(text: str, demo_schedules: bool = False) -> tuple[str, ...]:
    """``all`` (every registered method whose default schedule meets a MAC budget) or a comma list."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return tuple(n for n in list_methods() if _meets_macs(n, demo_schedules))
    known = set(list_methods())
    for name in names:
        if name not in known:
            method_class(name)  # the registry's error, with close matches
    return tuple(names)


def _meets_macs(name: str, demo_schedules: bool) -> bool:
    probe = CompareSpec((name,), (0.5,), TrainConfig(), demo_schedules=demo_schedules)
    if probe.schedule(name) is None:
        return False
    try:
        method = create_method(name, Selection.of(target_macs=0.5), **probe.options(name))
    except PrunekitError:
        return False
    return method.budget_kind() == "macs"


def parse_method_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` items (values as YAML scalars, converted to the option's type later)."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not method.strip() or not key.strip():
            raise ConfigError(f"--option expects METHOD.KEY=VALUE (e.g. l1.rates=0.3), got {item!r}")
        options.setdefault(method.strip(), {})[key.strip()] = value.strip()
    return options


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{what} must be numbers separated by commas, got {text!r}") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """``3`` means seeds 0, 1, 2; ``0,5,9`` lists them."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be a count (3) or a list (0,5,9), got {text!r}") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--seeds must be at least 1, got {values[0]}")
        return tuple(range(values[0]))
    return tuple(values)


@dataclass
class CompareResult:
    rows: list[MethodRow]
    dense: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)  # row folder -> error
    out: Path = Path(".")


def row_dir(out: Path, budget: float, method: str, seed: int) -> Path:
    return out / "rows" / f"macs{budget:g}" / method / f"seed{seed}"


def finished(path: Path) -> dict[str, Any] | None:
    """The summary of a finished row folder, or None (missing, running or incomplete)."""
    if not (path / "model.safetensors").is_file() or not (path / "summary.json").is_file():
        return None
    try:
        return RunFolder(path, exist_ok=True).read_summary()
    except PrunekitError:
        return None


def run_compare(
    model: str,
    data: DataSpec,
    spec: CompareSpec,
    out: str | Path,
    *,
    train: TrainConfig | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    resume: bool = False,
    say: Callable[[str], None] = print,
) -> CompareResult:
    """Dense model (a model file, or a zoo architecture trained with `train`) → every method at every
    budget and seed → interleaved timing → compare.md, compare.csv, plots, summary.json in `out`.

    `out` follows the run-folder rules: a folder holding a compare is refused unless `resume` continues it
    (the same configuration; finished rows are kept) or `overwrite` replaces it."""
    spec.check()
    _check_model(model, train, model_kwargs)
    data.check()
    if _is_file_name(model):  # the dataset and normalisation the file records, unless given
        data = data.for_model(model_file.read_metadata(model).get("info") or {}, model)
    elif data.name is None:
        raise ConfigError(f"--model {model} is an architecture: give --data to train it on")
    if data.normalize is None:
        data = dataclasses.replace(data, normalize=True)
    config = _config(model, data, spec, train, model_kwargs)
    run = open_run(out, overwrite=overwrite, resume=resume)
    if resume:
        _check_same(run.read_config(), config)
    env = _Env(device, threads, progress, say)
    with run.recording(config, resume=resume):
        return _compare(model, data, spec, run.path, train, model_kwargs, env)


def _config(
    model: str,
    data: DataSpec,
    spec: CompareSpec,
    train: TrainConfig | None,
    model_kwargs: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "command": "compare",
        "model": model,
        "model_kwargs": model_kwargs or {},
        "data": dataclasses.asdict(data),
        "train": train.to_dict() if train is not None else None,
        "methods": list(spec.methods),
        "budgets": list(spec.budgets),
        "seeds": list(spec.seeds),
        "finetune": spec.finetune.to_dict(),
        "sparsify_epochs": spec.sparsify_epochs,
        "calib_images": spec.calib_images,
        "latency_batches": list(spec.latency_batches),
        "demo_schedules": spec.demo_schedules,
        "method_options": spec.method_options,
    }


def _check_same(recorded: dict[str, Any], config: dict[str, Any]) -> None:
    """A resumed compare must be the same comparison: rows already finished would not match otherwise."""
    plain = yaml.safe_load(yaml.safe_dump(_jsonable(config), sort_keys=False))
    changed = [k for k in plain if recorded.get(k) != plain[k]]
    if changed:
        what = "; ".join(f"{k}: {recorded.get(k)!r} in the run, {plain[k]!r} now" for k in changed)
        raise ConfigError(f"--resume continues the same comparison, but {what}; drop --resume to start anew")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


@dataclass(frozen=True)
class _Env:
    """Where and how the rows run: the same for the dense model and every row."""

    device: str | None
    threads: int | None
    progress: bool | None
    say: Callable[[str], None]


def _compare(
    model: str,
    data: DataSpec,
    spec: CompareSpec,
    out: Path,
    train: TrainConfig | None,
    model_kwargs: dict[str, Any] | None,
    env: _Env,
) -> CompareResult:
    say, device, threads, progress = env.say, env.device, env.threads, env.progress
    dense_path = _dense(model, data, out, train, model_kwargs, env)
    failed: dict[str, str] = {}
    summaries: dict[tuple[float, str, int], dict[str, Any]] = {}
    for budget in spec.budgets:
        for name in spec.methods:
            for seed in spec.seeds:
                path = row_dir(out, budget, name, seed)
                done = finished(path)
                if done is not None:
                    say(f"{name} at {budget:g}× MACs, seed {seed}: finished earlier, kept")
                    summaries[(budget, name, seed)] = done
                    continue
                say(f"{name} at {budget:g}× MACs, seed {seed}")
                # An interrupted row continues (its sparsify and fine-tune stages from their last epoch, the
                # same configuration by construction); one that never wrote its config starts again.
                resume_row = (path / "config.yaml").is_file()
                if path.exists() and not resume_row:
                    shutil.rmtree(path)
                try:
                    summaries[(budget, name, seed)] = prune_run(
                        dense_path,
                        spec.row_spec(name, budget),
                        dataclasses.replace(data, seed=seed),
                        path,
                        sparsify=spec.sparsify(name, seed),
                        finetune=dataclasses.replace(spec.finetune, seed=seed),
                        device=device,
                        latency_batches=(),
                        threads=threads,
                        progress=progress,
                        resume=resume_row,
                    )
                except PrunekitError as exc:  # one method failing its budget must not sink the table
                    failed[str(path.relative_to(out))] = str(exc)
                    say(f"  failed: {exc}")
    dense_model = model_file.load(dense_path).eval()
    dense_summary = finished(dense_path.parent) or {}
    if not summaries:
        raise PrunekitError(
            "no row of the comparison finished:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items())
        )
    shape = tuple(next(iter(summaries.values()))["input_shape"])
    stats = _time_interleaved(dense_model, summaries, out, shape, spec, threads or 1)
    rows = _method_rows(summaries, spec, stats, out)
    dense = {
        "top1": _dense_top1(dense_model, dense_summary, summaries),
        "params": stats["dense"][0],
        "macs": stats["dense"][1],
        "latency": {b: s.to_record() for b, s in stats["dense"][2].items()},
        "widths": next((s["widths_before"] for s in summaries.values() if s.get("widths_before")), {}),
    }
    write_comparison(out, rows, dense, failed, spec.finetune.epochs, spec.seeds)
    return CompareResult(rows, dense, failed, out)


def _dense(
    model: str,
    data: DataSpec,
    out: Path,
    train: TrainConfig | None,
    model_kwargs: dict[str, Any] | None,
    env: _Env,
) -> Path:
    """The dense model file: given, or trained once into ``out/dense`` (kept when already finished)."""
    if _is_file_name(model):
        return Path(model)
    assert train is not None  # `_check_model`
    if finished(out / "dense") is None:
        env.say(f"training the dense {model} once ({train.epochs} epochs)")
        if (out / "dense").exists():
            shutil.rmtree(out / "dense")
        train_run(model, data, train, out / "dense", model_kwargs=model_kwargs, device=env.device,
                  latency_batches=(), threads=env.threads, progress=env.progress)  # fmt: skip
    else:
        env.say("dense model: finished earlier, kept")
    return out / "dense" / "model.safetensors"


def _is_file_name(model: str) -> bool:
    return Path(model).suffix == ".safetensors" or Path(model).is_file()


def _check_model(model: str, train: TrainConfig | None, model_kwargs: dict[str, Any] | None) -> None:
    if _is_file_name(model):
        if not Path(model).is_file():
            raise ConfigError(f"dense model file {model} does not exist")
        if train is not None or model_kwargs:
            raise ConfigError(
                f"--model {model} is a trained model file: --epochs and --shortcut only apply when --model "
                "names an architecture to train; drop them"
            )
        return
    if model not in list_models():
        raise ConfigError(
            f"--model {model!r} is neither a model file nor a zoo architecture (`prunekit list models`)"
        )
    if train is None:
        raise ConfigError(f"--model {model} is an architecture: give --epochs to train the dense model first")


Timed = tuple[int, int, dict[int, LatencyStats]]


def _time_interleaved(
    dense: Any,
    summaries: dict[tuple[float, str, int], dict[str, Any]],
    out: Path,
    shape: Sequence[int],
    spec: CompareSpec,
    threads: int,
) -> dict[str, Timed]:
    """Params, MACs and latency of the dense model and of the first seed's model of each (budget, method),
    all timed interleaved in this process (seeds share an architecture only when the widths agree, so
    each seed's MACs are read from its own summary)."""
    from prunekit.measure import cost

    models = {"dense": dense}
    for budget, name, seed in summaries:
        key = f"{budget:g}/{name}"
        if key not in models:
            models[key] = model_file.load(row_dir(out, budget, name, seed) / "model.safetensors").eval()
    timed: dict[str, Timed] = {}
    for key, m in models.items():
        c = cost(m, tuple(shape))
        timed[key] = (c.params, c.macs, {})
    for b in spec.latency_batches:
        for key, res in compare_latency(models, shape, batch_size=b, threads=threads).items():
            timed[key][2][b] = res.stats
    return timed


def _dense_top1(dense: Any, dense_summary: dict[str, Any], summaries: dict) -> float | None:
    if dense_summary.get("top1") is not None:
        return float(dense_summary["top1"])
    for s in summaries.values():  # every prune row evaluated the same dense model
        if s.get("dense", {}).get("top1") is not None:
            return float(s["dense"]["top1"])
    return dense.prunekit_info.get("top1")


def _best(path: Path, summary: dict[str, Any]) -> float:
    """Best validation top-1 of the row's fine-tune (its final top-1 when it did not fine-tune)."""
    if summary["pruned"].get("best_top1") is not None:
        return float(summary["pruned"]["best_top1"])
    log = RunFolder(path, exist_ok=True).read_log()  # runs written before prune summaries held it
    accuracies = [row["val_top1"] for row in log if "val_top1" in row]
    return max(accuracies, default=summary["pruned"]["top1"])


def _method_rows(
    summaries: dict[tuple[float, str, int], dict[str, Any]],
    spec: CompareSpec,
    stats: dict[str, Timed],
    out: Path,
) -> list[MethodRow]:
    rows = []
    for budget in spec.budgets:
        for name in spec.methods:
            seeds = [s for s in spec.seeds if (budget, name, s) in summaries]
            if not seeds:
                continue
            runs = [summaries[(budget, name, s)] for s in seeds]
            paths = [row_dir(out, budget, name, s) for s in seeds]
            params, _, latency = stats[f"{budget:g}/{name}"]
            macs = [r["pruned"]["macs"] for r in runs]
            rows.append(
                MethodRow(
                    budget=budget,
                    method=name,
                    label=_label(spec, name),
                    seeds=tuple(seeds),
                    params=params,
                    macs=statistics.fmean(macs),
                    macs_reached=statistics.fmean(macs) / runs[0]["dense"]["macs"],
                    top1_last=_mean_std([r["pruned"]["top1"] for r in runs]),
                    top1_best=_mean_std([_best(p, r) for p, r in zip(paths, runs, strict=True)]),
                    top1_before=_mean_std([r["pruned"]["top1_before_finetune"] for r in runs]),
                    wall_time_s=statistics.fmean(r.get("wall_time_s", math.nan) for r in runs),
                    latency=latency,
                    widths=runs[0].get("widths_after", {}),
                )
            )
    return rows


def _label(spec: CompareSpec, name: str) -> str:
    schedule = spec.schedule(name)
    options = ", ".join(f"{k}={v}" for k, v in spec.options(name).items())
    return (schedule.label if schedule is not None else "") or options


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
