"""The runs behind the CLI and the one-call Python API.

train: data → model → fit → run folder. prune: checkpoint → (sparsify) → plan → surgery → fine-tune →
evaluate → run folder. Every stage writes the same run-folder layout so runs can be compared.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import model_file
from prunekit.data import build_loaders, list_datasets
from prunekit.errors import ConfigError, PrunekitError, unknown_name
from prunekit.measure import CONVENTION, compare_latency, cost, sparsity_report
from prunekit.measure.allocator import steady_allocator
from prunekit.methods import Method, Pruned, Selection, Stage, create_method, meet
from prunekit.methods.alignment import deployment_selection
from prunekit.methods.base import no_prunable_layer, prunable_groups
from prunekit.methods.stage import STAGE_FOLDER, STAGES_LOG, STAGES_STATE
from prunekit.models import create, default_input_shape, model_entry
from prunekit.models.probe import evaluating
from prunekit.report import RunFolder, comparison_markdown, plot_curves, plot_widths
from prunekit.report.run_folder import open_run
from prunekit.report.tables import ComparisonRow
from prunekit.surgery import LowRankConv2d, attach, record_masks
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.distributed import DistInfo, cleanup, init_distributed
from prunekit.train.threads import use_threads
from prunekit.train.trainer_state import STATE, WEIGHTS


@dataclass
class DataSpec:
    """A run's data. `name=None` (and `normalize=None`, empty `options`) mean: what the model file records,
    for runs that start from one (`prune`, `finetune`, `eval`); every other field acts either way."""

    name: str | None = None
    root: str | None = None
    download: bool = True
    batch_size: int = 128
    eval_batch_size: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    normalize: bool | None = None  # False: pixels in [0, 1], as scripts that use only ToTensor(); None: True
    options: dict[str, Any] = field(default_factory=dict)  # dataset keywords (e.g. synthetic shape)

    def check(self) -> None:
        """Everything that can be checked without reading data, so a typo fails before any work."""
        if self.name is not None and self.name not in list_datasets():
            raise unknown_name("dataset", self.name, list_datasets())
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--eval-batch-size", self.eval_batch_size),
            ("--limit-train", self.limit_train),
            ("--limit-test", self.limit_test),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{flag} must be a whole number ≥ 1, got {value!r}")

    def loaders(self, device: torch.device, *, rank: int = 0, world_size: int = 1) -> tuple[Any, Any, Any]:
        """(train loader, test loader, train split) of this dataset on `device`."""
        if self.name is None:
            raise ConfigError("no dataset: pass --data (the model file records none)")
        return build_loaders(
            self.name,
            self.batch_size,
            device=device,
            root=self.root,
            download=self.download,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            eval_batch_size=self.eval_batch_size,
            limit_train=self.limit_train,
            limit_test=self.limit_test,
            normalize=self.normalize is not False,
            **self.options,
        )

    def recorded(self) -> dict[str, Any]:
        """What a model file records about its data, so later runs take the same dataset and inputs."""
        return {"dataset": self.name, "normalize": self.normalize is not False, "data_options": self.options}

    def for_model(self, info: dict[str, Any], path: str | Path) -> DataSpec:
        """This spec with what it leaves open taken from a model file's info: the dataset, its keywords
        (e.g. a synthetic shape, else the recorded input shape) and the normalisation."""
        name = self.name or info.get("dataset")
        if not name:
            raise ConfigError(f"{path} does not record its dataset; pass --data")
        options = dict(self.options)
        if not options and name == info.get("dataset"):
            options = dict(info.get("data_options") or {})
            if name == "synthetic" and not options and info.get("input_shape"):
                options = {"shape": tuple(info["input_shape"])}
        normalize = self.normalize if self.normalize is not None else bool(info.get("normalize", True))
        return dataclasses.replace(self, name=name, options=options, normalize=normalize)

    @classmethod
    def of_checkpoint(cls, info: dict[str, Any], path: str | Path) -> DataSpec:
        """The dataset a model file was trained on, as recorded in its info."""
        return cls().for_model(info, path)


def check_latency_batches(batches: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Batch sizes to time (none: no timing, as the demo's per-method runs); each at least one."""
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        shown = ",".join(map(str, batches))
        raise ConfigError(f"--latency-batches must be batch sizes ≥ 1, e.g. 1,64; got {shown}")
    return tuple(batches)


def load_teacher(path: str | Path | None, device: torch.device | str = "cpu") -> nn.Module | None:
    """The distillation teacher (a prunekit model file), checked before any data is read."""
    if path is None:
        return None
    return model_file.load(path, device=device).eval()


@contextmanager
def run_warnings(into: list[str]) -> Iterator[None]:
    """The run's warning channel: prunekit's own warnings raised during a run (HRank's calibration
    shortfall, a lowered coupled ratio, ...) are collected into `into`, once each, for the summary and the
    CLI, instead of Python's `file:line: UserWarning` lines; other libraries' warnings pass through."""
    package = str(Path(__file__).resolve().parent)
    original = warnings.showwarning
    passed: set[tuple[type, str]] = set()

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None):
        text = str(message)
        if str(Path(filename).resolve()).startswith(package):
            if text not in into:
                into.append(text)
        elif (category, text) not in passed:  # "always" below: other libraries' repeats shown once
            passed.add((category, text))
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a warning given before this run (same process) is given again
        warnings.showwarning = show
        yield


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def input_shape_of(dataset: Any) -> tuple[int, int, int]:
    return tuple(int(s) for s in dataset.shape)  # type: ignore[return-value]


def check_runs_on(model: nn.Module, shape: tuple[int, int, int], what: str) -> None:
    """Fail before training, with the shapes named, when the architecture cannot take the data's images."""
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(1, *shape))
    except RuntimeError as exc:
        raise ConfigError(
            f"{what}: the model cannot run on {'x'.join(map(str, shape))} images ({str(exc).splitlines()[0]})"
        ) from None


def measure_model(
    model: nn.Module, input_shape: tuple[int, int, int], latency_batches: tuple[int, ...], threads: int = 1
) -> dict[str, Any]:
    """Params, MACs (with the convention sentence) and deployed latency per batch size, with the threads
    and the allocator setting it was timed under (`measure.allocator`)."""
    measured = compare_models({"model": model}, input_shape, latency_batches, threads)["model"]
    allocator = steady_allocator()  # as `compare_latency` set it
    return {**measured, "convention": CONVENTION, "latency_threads": threads, "latency_allocator": allocator}


def train_run(
    arch: str,
    data: DataSpec,
    cfg: TrainConfig,
    out: str | Path,
    *,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    teacher_path: str | None = None,
    latency_batches: tuple[int, ...] = (1,),
    threads: int | None = None,
    progress: bool | None = None,
    config_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `arch` on `data` into run folder `out`; returns the summary written to summary.json.

    Under torchrun every rank trains its shard (DistributedDataParallel); only rank 0 writes the run folder
    and returns the summary, the others return {}."""
    dist: DistInfo = init_distributed(device=None if device in (None, "auto") else device)
    failed = True
    try:
        summary = _train_run(
            arch,
            data,
            cfg,
            out,
            dist,
            model_kwargs=model_kwargs,
            resume=resume,
            overwrite=overwrite,
            device=device,
            teacher_path=teacher_path,
            latency_batches=latency_batches,
            threads=threads,
            progress=progress,
            config_record=config_record,
        )
        failed = False
        return summary
    finally:
        cleanup(failed=failed)


def _train_run(
    arch: str,
    data: DataSpec,
    cfg: TrainConfig,
    out: str | Path,
    dist: DistInfo,
    *,
    model_kwargs: dict[str, Any] | None,
    resume: bool,
    overwrite: bool,
    device: str | None,
    teacher_path: str | None,
    latency_batches: tuple[int, ...],
    threads: int | None,
    progress: bool | None,
    config_record: dict[str, Any] | None,
) -> dict[str, Any]:
    # Everything a user can get wrong is checked before the data is read or the folder touched.
    threads = use_threads(threads)
    latency_batches = check_latency_batches(latency_batches)
    model_entry(arch)
    if data.name is None:
        raise ConfigError("--data is required (e.g. --data cifar10)")
    data.check()
    run = open_run(out, overwrite=overwrite, resume=resume) if dist.is_main else None
    dev = dist.device if dist.world_size > 1 else resolve_device(device)
    teacher = load_teacher(teacher_path, dev)
    train_loader, val_loader, train_set = data.loaders(dev, rank=dist.rank, world_size=dist.world_size)
    shape = input_shape_of(train_set)
    kwargs = {"num_classes": train_set.num_classes, "in_channels": shape[0], **(model_kwargs or {})}
    if (kwargs["num_classes"], kwargs["in_channels"]) != (train_set.num_classes, shape[0]):
        raise ConfigError(
            f"{arch} asked for {kwargs['num_classes']} classes / {kwargs['in_channels']} input channels, but "
            f"{data.name} has {train_set.num_classes} classes / {shape[0]} channels"
        )
    torch.manual_seed(cfg.seed)  # the initial weights are part of the run: same seed, same model
    model = create(arch, **kwargs)
    check_runs_on(model, shape, f"{arch} on {data.name}")
    config = {
        **(config_record or {}),
        "arch": arch,
        "model_kwargs": dict(model_kwargs or {}),
        "data": _plain(dataclasses.asdict(data)),
        "train": cfg.to_dict(),
        "teacher": teacher_path,
        "threads": threads,
    }
    warned: list[str] = []
    with run.recording(config, resume=resume) if run else nullcontext(), run_warnings(warned):
        started = time.time()
        result = fit(
            model,
            train_loader,
            val_loader,
            cfg,
            teacher=teacher,
            run_dir=run.path if run else None,
            resume=resume,
            progress=progress,
            device=dev,
            dist=dist,
        )
        if run is None:
            return {}
        model = model.to("cpu").eval()
        measured = measure_model(model, shape, latency_batches, threads)
        summary = RunSummary(
            "train",
            data.name,
            list(shape),
            time.time() - started,
            arch=arch,
            top1=result.final_top1,
            best_top1=result.best_top1,
            epochs=result.epochs_run,
            measured=measured,
            threads=threads,
            warnings=warned,
        )
        row = ComparisonRow(
            arch, result.final_top1, measured["params"], measured["macs"], measured["latency_ms"]
        )
        return finish_run(
            run,
            model,
            summary,
            info={
                "top1": result.final_top1,
                "macs": measured["macs"],
                **data.recorded(),
                "input_shape": list(shape),
            },
            title=f"Training run: {arch} on {data.name}",
            rows=[row],
            history=run.read_log() or list(result.history),
            curves_title=f"{arch} on {data.name}",
        )


def evaluate_checkpoint(path: str, data: DataSpec | None = None, device: str | None = None) -> dict[str, Any]:
    """Test-split metrics of a model file; the dataset, its keywords and the normalisation default to what
    the file records."""
    data = data or DataSpec()
    data.check()
    dev = resolve_device(device)
    model = model_file.load(path, device=dev)
    data = data.for_model(model.prunekit_info, path)
    _, val_loader, train_set = dataclasses.replace(data, limit_train=1).loaders(dev)
    check_runs_on(model.to("cpu"), input_shape_of(train_set), f"{path} on {data.name}")
    return evaluate(model, val_loader, device=dev)


def load_for_profile(
    target: str, input_shape: tuple[int, ...] | None
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A checkpoint path or a zoo name → (model, per-image input shape)."""
    if Path(target).suffix == ".safetensors" or Path(target).is_file():
        model = model_file.load(target)
        shape = input_shape or tuple(model.prunekit_info.get("input_shape", ()))
        if not shape:
            arch = model.prunekit_arch
            shape = default_input_shape(arch["name"], arch["kwargs"].get("in_channels"))
    else:
        model = create(target)
        shape = tuple(input_shape) if input_shape else default_input_shape(target)
    if input_shape:
        check_runs_on(model, tuple(shape), f"{target} with --input-shape")  # type: ignore[arg-type]
    return model, tuple(shape)  # type: ignore[return-value]


def _report_md(title: str, rows: list[ComparisonRow], summary: RunSummary, plots: list[str]) -> str:
    lines = [f"# {title}", "", comparison_markdown(rows), f"Wall time: {summary.wall_time_s:.1f} s.\n"]
    lines += [f"![{name}]({name})\n" for name in plots]
    return "\n".join(lines)


@dataclass
class RunSummary:
    """What a run's summary.json holds (`to_dict` is its JSON form). Train and fine-tune runs fill `arch` or
    `source`, `top1`, `best_top1`, `epochs` and `measured`; prune runs fill the method fields, `dense` and
    `pruned` (each a measured record with accuracies) and the widths. `method_details` go under the
    method's own name (``summary[method]``)."""

    kind: str
    dataset: str
    input_shape: list[int]
    wall_time_s: float
    arch: str | None = None
    source: str | None = None
    top1: float | None = None
    best_top1: float | None = None
    epochs: int | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    selection: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, Any] = field(default_factory=dict)
    pruned: dict[str, Any] = field(default_factory=dict)
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    sparsity: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    method_details: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, list[str]] | None = None  # prune: the layers eligible for pruning and those pruned
    sparsify: dict[str, Any] | None = None  # prune: the sparsify stage as it ran (config, steps)
    threads: int | None = None  # CPU threads of training and timing
    warnings: list[str] = field(default_factory=list)  # the run's warning channel

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "complete",
            "kind": self.kind,
            "dataset": self.dataset,
            "input_shape": self.input_shape,
        }
        if self.kind == "prune":
            out |= {
                "method": self.method,
                "selection": self.selection,
                "options": self.options,
                "dense": self.dense,
                "pruned": self.pruned,
                "mac_speedup": self.dense["macs"] / max(1, self.pruned["macs"]),
                "widths_before": self.widths_before,
                "widths_after": self.widths_after,
                "sparsity": self.sparsity,
                "budget": self.budget,
                "layers": self.layers,
                "sparsify": self.sparsify,
            }
            if self.method_details:
                out[str(self.method)] = self.method_details
        else:
            out |= {k: v for k, v in (("arch", self.arch), ("source", self.source)) if v is not None}
            out |= {"top1": self.top1, "best_top1": self.best_top1, "epochs": self.epochs, **self.measured}
        out["wall_time_s"] = self.wall_time_s
        out["threads"] = self.threads
        out["warnings"] = list(self.warnings)
        return out


def finish_run(
    run: RunFolder,
    model: nn.Module,
    summary: RunSummary,
    *,
    info: dict[str, Any],
    title: str,
    rows: list[ComparisonRow],
    history: list[dict[str, Any]],
    curves_title: str,
    widths: tuple[dict[str, int], dict[str, int]] | None = None,
    start_top1: float | None = None,
) -> dict[str, Any]:
    """The one tail of every run: model file, plots, summary.json and report.md; returns the summary.
    `start_top1`: the validation top-1 before the first epoch (right after pruning), drawn on the curves."""
    model_file.save(model, run.file("model.safetensors"), info=info)
    plots = []
    if widths is not None:
        ranks = layer_ranks(model)
        what = "output channels and ranks" if ranks else "output channels"
        plots.append(plot_widths(*widths, run.file("widths.png"), title=f"{title}: {what}", ranks=ranks).name)
    if history:
        curves = plot_curves(history, run.file("curves.png"), title=curves_title, start_top1=start_top1)
        plots.append(curves.name)
    record = summary.to_dict()
    run.write_summary(record)
    run.write_text("report.md", _report_md(title, rows, summary, plots))
    return record


# ---------------------------------------------------------------- pruning


@dataclass
class PruneSpec:
    """A method, its options, and the layer selection: at most one of ratio / ratios / target_macs /
    speedup / target_density (none: the method's own default)."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    ratios: str | None = None
    target_macs: float | None = None
    speedup: float | None = None
    target_density: float | None = None
    calib_images: int | None = None  # None: what the method asks for (`Method.calib_images`)
    target_latency: float | None = None
    speedup_latency: float | None = None
    round_to: int | str | None = None  # kept widths multiples of it; "auto": measured on this machine
    step_scale: float = 1.0  # a shortened run: the stage a method declares in steps, this much as long

    def selection(self, threads: int = 1, batch_size: int = 1) -> Selection | None:
        """The selection; a latency budget is stated at `batch_size` and `threads`."""
        selection = Selection.of(
            ratio=self.ratio,
            ratios=self.ratios,
            target_macs=self.target_macs,
            speedup=self.speedup,
            target_density=self.target_density,
            target_latency=self.target_latency,
            speedup_latency=self.speedup_latency,
        )
        return deployment_selection(selection, self.round_to, threads, batch_size)

    def build(self, threads: int = 1, batch_size: int = 1) -> Method:
        """The configured method; every option and the selection are checked here, before any work."""
        if self.calib_images is not None and self.calib_images < 1:
            raise ConfigError(f"calib_images must be at least 1, got {self.calib_images}")
        method = create_method(self.method, self.selection(threads, batch_size), **self.options)
        return method.shortened(self.step_scale)


def build_method(
    method: str,
    *,
    ratio: float | None = None,
    ratios: str | None = None,
    target_macs: float | None = None,
    speedup: float | None = None,
    target_density: float | None = None,
    options: dict[str, Any] | None = None,
    target_latency: float | None = None,
    speedup_latency: float | None = None,
    round_to: int | str | None = None,
    latency_batch: int = 1,
    latency_threads: int = 1,
) -> Method:
    """A configured method: the selection is parsed once, here at the edge, and handed to the method."""
    spec = PruneSpec(
        method,
        options or {},
        ratio=ratio,
        ratios=ratios,
        target_macs=target_macs,
        speedup=speedup,
        target_density=target_density,
        target_latency=target_latency,
        speedup_latency=speedup_latency,
        round_to=round_to,
    )
    return spec.build(latency_threads, latency_batch)


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    method: str = "l1",
    *,
    ratio: float | None = None,
    ratios: str | None = None,
    target_macs: float | None = None,
    speedup: float | None = None,
    target_density: float | None = None,
    calib: torch.Tensor | None = None,
    target_latency: float | None = None,
    speedup_latency: float | None = None,
    round_to: int | str | None = None,
    latency_batch: int = 1,
    latency_threads: int = 1,
    **options: Any,
) -> nn.Module:
    """One-shot pruning: `method` decides what goes, the surgery removes it; returns the smaller model.

    The input model is not modified. `calib` (a batch of real inputs) feeds data-driven criteria; without it
    `example_input` is used. Methods that train while pruning (a sparsify stage, HRank's layer-wise
    schedule) need a run (`prune_run` / `prunekit prune`); here a regulariser's plan is taken from the
    weights as they are, and a schedule that needs data is refused. Masks that remain are recorded on the
    returned model (``model.prunekit_masks``). `round_to` makes kept widths multiples of it ("auto":
    measured here); `target_latency` / `speedup_latency` budget the deployed latency at `latency_batch`
    and `latency_threads` (predicted by a lookup table, then measured)."""
    m = build_method(
        method,
        ratio=ratio,
        ratios=ratios,
        target_macs=target_macs,
        speedup=speedup,
        target_density=target_density,
        options=options,
        target_latency=target_latency,
        speedup_latency=speedup_latency,
        round_to=round_to,
        latency_batch=latency_batch,
        latency_threads=latency_threads,
    )
    calib = example_input if calib is None else calib
    try:
        m.prepare(model, calib)
        pruned = prune_stage(m, model, calib)
    except PrunekitError:
        raise
    except Exception as exc:
        refuse_input_the_model_rejects(model, example_input, exc)
        raise
    refuse_when_nothing_prunable(model, pruned, example_input)
    return pruned.model


def refuse_input_the_model_rejects(model: nn.Module, example: torch.Tensor, exc: Exception) -> None:
    """After an unexpected failure: when the model itself does not run on the example input (an image
    smaller than its kernels allow, the wrong channel count), say so as the user's error. Only then, so a
    successful prune pays no extra forward; any other failure is left as it was (a bug to report)."""
    try:
        with torch.no_grad(), evaluating(model):
            model(example)
    except Exception as own:
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise ConfigError(
            f"the model does not run on the example input of shape {shape} "
            f"({type(own).__name__}: {own}); pass an input the model accepts"
        ) from exc


def refuse_when_nothing_prunable(model: nn.Module, pruned: Pruned, example: torch.Tensor) -> None:
    """A model returned unchanged because no layer can lose channels is refused with the engine's reasons:
    handing back the dense model as if pruned would be a silent no-op (e.g. weight-standardised convs)."""

    def count(net: nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    if pruned.masks or count(pruned.model) != count(model) or eligible_layers(model, example):
        return
    raise no_prunable_layer(model, example, "nothing was pruned")


def prune_stage(method: Method, model: nn.Module, calib: torch.Tensor, stage: Stage | None = None) -> Pruned:
    """The prune stage: the method's `prune` with its budget met (`methods.budget.meet`), and the masks that
    remain recorded on the pruned model so its file keeps them."""
    pruned = meet(method, model, calib, stage)
    if pruned.masks is not None and all(bool(m.all()) for m in pruned.masks.values()):
        pruned.masks = None
    if pruned.masks is not None:
        record_masks(pruned.model, pruned.masks)
        pruned.masks = pruned.model.prunekit_masks
    return pruned


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by name; a factorised conv (`LowRankConv2d`) is one
    layer under its own name, not its two factors (its rank is in `layer_ranks`)."""
    factorised = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, LowRankConv2d))
    return {
        name: m.out_features if isinstance(m, nn.Linear) else m.out_channels
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, LowRankConv2d)) and not name.startswith(factorised)
    }


def layer_ranks(model: nn.Module) -> dict[str, int]:
    """The rank of every factorised conv, by name."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LowRankConv2d)}


def calibration_batch(loader: Any, n_images: int) -> torch.Tensor:
    """The first `n_images` inputs of a loader's current epoch (augmented like training data)."""
    chunks, total = [], 0
    for x, _ in loader:
        chunks.append(x)
        total += len(x)
        if total >= n_images:
            break
    if not chunks:
        raise ConfigError("the training loader is empty; cannot draw calibration images")
    return torch.cat(chunks)[:n_images]


def sparsify_config(method: Method, cfg: TrainConfig | None, steps_per_epoch: int) -> TrainConfig | None:
    """The sparsify stage as it runs: None when the run asks for none (no config, or 0 epochs). A method
    that declares its length in steps (`sparsify_steps`, TPP's λ ramp) runs whole epochs covering them;
    its config then has 1 epoch, which only switches the stage on — any other count would be ignored, so
    it is refused."""
    if cfg is None or cfg.epochs <= 0:
        return None
    if not type(method).needs_sparsify():
        raise ConfigError(f"method {method.name!r} has no sparsify stage; drop --sparsify-epochs")
    steps = method.sparsify_steps(steps_per_epoch)
    if steps is None:
        return cfg
    epochs = max(1, math.ceil(steps / steps_per_epoch))
    if cfg.epochs != 1:
        raise ConfigError(
            f"{method.name} sets the length of its sparsify stage itself ({steps:,} steps = {epochs} epochs "
            f"of {steps_per_epoch} batches), so {cfg.epochs} sparsify epochs would be ignored: give "
            "--sparsify-epochs auto (or 1) to run its stage, 0 for none, and change its length with its "
            f"options (`prunekit prune --method {method.name} --help`)"
        )
    return dataclasses.replace(cfg, epochs=epochs)


def sparsify_stage(method: Method, model: nn.Module, stage: Stage, cfg: TrainConfig | None) -> nn.Module:
    """Regularised training with the method's hooks, when the run asks for it (`sparsify_config`); the
    model is trained in place and returned. In a resumed run the stage continues from its last finished
    epoch, the method's own state (λ clock, picks) included (`train.hooks`)."""
    cfg = sparsify_config(method, cfg, len(stage.train))
    if cfg is None:
        return model
    stage.fit(model, cfg, hooks=[method], subdir="sparsify")
    return model


def prune_run(
    checkpoint_path: str | Path,
    spec: PruneSpec,
    data: DataSpec | None,
    out: str | Path,
    *,
    sparsify: TrainConfig | None = None,
    finetune: TrainConfig | None = None,
    device: str | None = None,
    latency_batches: tuple[int, ...] = (1,),
    threads: int | None = None,
    teacher_path: str | Path | None = None,
    allow_noop: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    config_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """build → prepare → sparsify → prune → fine-tune → measure, into run folder `out`.

    A `teacher_path` distils into the fine-tuning. A method that removes nothing is an error (the run would
    report an unchanged model as pruned) unless `allow_noop`. `resume` continues the run in `out` (started
    with the same arguments): the sparsify and fine-tune stages go on from their last finished epoch with
    the method's state, and the deterministic stages between them run again."""
    started = time.time()
    threads = use_threads(threads)
    latency_batches = check_latency_batches(latency_batches)
    # A latency budget is predicted and measured at the first batch size the run times.
    method = spec.build(threads, latency_batches[0] if latency_batches else 1)
    data = data or DataSpec()
    data.check()
    if teacher_path is not None and (finetune is None or finetune.epochs <= 0):
        raise ConfigError("--teacher distils during fine-tuning; give --finetune-epochs N (N ≥ 1)")
    run = open_run(out, overwrite=overwrite, resume=resume)
    dense, data, train_loader, val_loader, shape, dev = _open_stage(checkpoint_path, data, device)
    teacher = load_teacher(teacher_path, dev)
    sparsify_run = sparsify_config(method, sparsify, len(train_loader))  # refused now, not after prepare
    config = {
        **(config_record or {}),
        "checkpoint": str(checkpoint_path),
        "method": method.name,
        "options": _plain(dataclasses.asdict(method.options)),
        "selection": method.selection.spec if method.selection is not None else None,
        "calib_images": spec.calib_images,
        "data": _plain(dataclasses.asdict(data)),
        "sparsify": sparsify.to_dict() if sparsify else None,
        "finetune": finetune.to_dict() if finetune else None,
        "teacher": str(teacher_path) if teacher_path is not None else None,
        "threads": threads,
    }
    warned: list[str] = []
    with run.recording(config, resume=resume), run_warnings(warned):
        if resume:
            _clear_unresumable(run.path)
        stage = Stage(train_loader, val_loader, finetune, run.path, dev, progress, teacher, resume=resume)
        dense_eval = evaluate(dense, val_loader, device=dev)
        model = copy.deepcopy(dense).to("cpu")  # `dense` stays the reference
        calib = calibration_batch(train_loader, spec.calib_images or method.calib_images()).to("cpu")
        method.prepare(model.eval(), calib)
        # The teacher distils into fine-tuning only: the sparsify stage trains against the labels.
        sparse_stage = dataclasses.replace(stage, teacher=None)
        model = sparsify_stage(method, model, sparse_stage, sparsify).to("cpu").eval()
        pruned = prune_stage(method, model, calib, stage)
        if not allow_noop:
            check_removed_something(method, model, pruned)
        pruned_eval = evaluate(pruned.model, val_loader, device=dev)
        final_top1, history = pruned_eval["top1"], []
        best_top1 = final_top1
        if pruned.needs_finetune and finetune is not None and finetune.epochs > 0:
            handle = attach(pruned.model, pruned.masks) if pruned.masks else None
            result = stage.fit(pruned.model, hooks=[handle])
            history, final_top1 = run.read_log() or list(result.history), result.final_top1
            best_top1 = result.best_top1
        small = pruned.model.to("cpu").eval()
        measured = compare_models(
            {"dense": dense.to("cpu").eval(), "pruned": small}, shape, latency_batches, threads
        )
        widths_before, widths_after = layer_widths(model), layer_widths(small)
        summary = RunSummary(
            "prune",
            str(data.name),
            list(shape),
            time.time() - started,
            method=method.name,
            selection=method.selection.spec if method.selection is not None else None,
            options=_plain(dataclasses.asdict(method.options)),
            dense={"top1": dense_eval["top1"], **measured["dense"]},
            pruned={
                "top1_before_finetune": pruned_eval["top1"],
                "top1": final_top1,
                "best_top1": best_top1,  # the fine-tune's best epoch; papers report both (e.g. TPP Tab. 1)
                **measured["pruned"],
            },
            widths_before=widths_before,
            widths_after=widths_after,
            sparsity=sparsity_report(small).to_dict() if pruned.masks else None,
            budget=dataclasses.asdict(pruned.budget) if pruned.budget is not None else None,
            method_details=_plain(pruned.details),
            layers={
                "eligible": eligible_layers(model, calib[:1]),
                "pruned": [name for name, w in widths_after.items() if widths_before.get(name, w) != w],
            },
            threads=threads,
            warnings=warned,
            sparsify=_sparsify_record(method, sparsify_run, len(train_loader)),
        )
        rows = [
            ComparisonRow("dense", dense_eval["top1"], *_cost_cells(measured["dense"])),
            ComparisonRow(
                method.name,
                final_top1,
                *_cost_cells(measured["pruned"]),
                note=f"{pruned_eval['top1']:.2f} % before fine-tuning",
            ),
        ]
        return finish_run(
            run,
            small,
            summary,
            info={
                "top1": final_top1,
                "macs": measured["pruned"]["macs"],
                **data.recorded(),
                "input_shape": list(shape),
                "method": method.name,
            },
            title=f"Pruning run: {method.name}",
            rows=rows,
            history=history,
            curves_title=f"fine-tuning after {method.name}",
            widths=(summary.widths_before, summary.widths_after),
            start_top1=pruned_eval["top1"],
        )


def _sparsify_record(method: Method, cfg: TrainConfig | None, steps_per_epoch: int) -> dict[str, Any] | None:
    """The sparsify stage as it ran, for the summary: its whole training config and its length."""
    if cfg is None:
        return None
    return {
        "train": cfg.to_dict(),
        "steps_per_epoch": steps_per_epoch,
        "steps": cfg.epochs * steps_per_epoch,
        "steps_declared": method.sparsify_steps(steps_per_epoch),
    }


#: What a resumed prune run continues: its record, the stages `fit` checkpoints (the sparsify stage in
#: its folder, the fine-tune in the run's root) and HRank's layer-wise stages (their log, the weights after
#: the last finished one, and their folders, which `layerwise_prune` trims). Everything else is made again
#: by the resumed run.
_RESUMABLE = {
    *("config.yaml", "summary.json", "log.jsonl", WEIGHTS, STATE, "sparsify"),
    *(STAGES_LOG, STAGES_STATE),
}


def _clear_unresumable(path: Path) -> None:
    """Remove what a resumed prune run makes again (plots, the model file, and the folders of training a
    method's own pruning runs without checkpoints, whose logs would otherwise be appended to)."""
    for child in path.iterdir():
        if child.name in _RESUMABLE or STAGE_FOLDER.fullmatch(child.name):
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def eligible_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The conv/linear layers whose output channels the surgery can remove (what a uniform ratio prunes)."""
    return [name for group in prunable_groups(model, example) for name in group.members]


def check_removed_something(method: Method, before: nn.Module, pruned: Pruned) -> None:
    """A pruning run whose model is unchanged (same parameter count, no mask) is refused with the reason
    and what to change: reporting it as pruned would be a silent no-op."""
    count = sum(p.numel() for p in before.parameters())
    if pruned.masks or sum(p.numel() for p in pruned.model.parameters()) != count:
        return
    hints = []
    if type(method).needs_sparsify():
        hints.append(
            "train the regulariser longer or harder (--sparsify-epochs, or the strength options listed by "
            f"`prunekit prune --method {method.name} --help`)"
        )
    hints.append("ask for more pruning (--ratio, --ratios, --target-macs or --speedup)")
    hints.append("pass --allow-noop to keep the unchanged model")
    raise ConfigError(
        f"method {method.name!r} removed nothing: every layer kept all its channels and no weight was "
        f"masked; {'; or '.join(hints)}"
    )


def _cost_cells(measured: dict[str, Any]) -> tuple[int, int, dict[int, float]]:
    return measured["params"], measured["macs"], measured["latency_ms"]


def _plain(value: Any) -> Any:
    """JSON/YAML-ready: tuples as lists, tensors as lists, mappings as dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def finetune_run(
    checkpoint_path: str | Path,
    data: DataSpec | None,
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    latency_batches: tuple[int, ...] = (1,),
    threads: int | None = None,
    teacher_path: str | Path | None = None,
    progress: bool | None = None,
    config_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune a (pruned) model file; masks stored in it are kept exactly zero. A `teacher_path` distils
    into the fine-tuning."""
    started = time.time()
    threads = use_threads(threads)
    latency_batches = check_latency_batches(latency_batches)
    data = data or DataSpec()
    data.check()
    run = open_run(out, overwrite=overwrite, resume=resume)
    model, data, train_loader, val_loader, shape, dev = _open_stage(checkpoint_path, data, device)
    teacher = load_teacher(teacher_path, dev)
    config = {
        **(config_record or {}),
        "checkpoint": str(checkpoint_path),
        "data": _plain(dataclasses.asdict(data)),
        "train": cfg.to_dict(),
        "teacher": str(teacher_path) if teacher_path is not None else None,
        "threads": threads,
    }
    warned: list[str] = []
    with run.recording(config, resume=resume), run_warnings(warned):
        masks = getattr(model, "prunekit_masks", None)
        handle = attach(model, masks) if masks else None
        result = fit(
            model,
            train_loader,
            val_loader,
            cfg,
            hooks=[handle],
            teacher=teacher,
            run_dir=run.path,
            resume=resume,
            progress=progress,
            device=dev,
        )
        model = model.to("cpu").eval()
        measured = measure_model(model, shape, latency_batches, threads)
        summary = RunSummary(
            "finetune",
            str(data.name),
            list(shape),
            time.time() - started,
            source=str(checkpoint_path),
            top1=result.final_top1,
            best_top1=result.best_top1,
            epochs=result.epochs_run,
            measured=measured,
            threads=threads,
            warnings=warned,
        )
        row = ComparisonRow("fine-tuned", result.final_top1, *_cost_cells(measured))
        return finish_run(
            run,
            model,
            summary,
            info={
                **model.prunekit_info,
                "top1": result.final_top1,
                **data.recorded(),
                "input_shape": list(shape),
            },
            title="Fine-tuning run",
            rows=[row],
            history=run.read_log() or list(result.history),
            curves_title="fine-tuning",
        )


def _open_stage(
    checkpoint_path: str | Path, data: DataSpec, device: str | None
) -> tuple[nn.Module, DataSpec, Any, Any, tuple[int, int, int], torch.device]:
    """What a run that starts from a model file needs: the model (on CPU), its data (what the file records
    where `data` leaves it open), the loaders, the per-image shape (checked against the model) and the
    device."""
    dev = resolve_device(device)
    model = model_file.load(checkpoint_path, device="cpu")
    data = data.for_model(model.prunekit_info, checkpoint_path)
    train_loader, val_loader, train_set = data.loaders(dev)
    shape = input_shape_of(train_set)
    check_runs_on(model, shape, f"{checkpoint_path} on {data.name}")
    return model, data, train_loader, val_loader, shape, dev


def compare_models(
    models: dict[str, nn.Module],
    shape: tuple[int, int, int],
    latency_batches: tuple[int, ...],
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Params/MACs of each model and their deployed latency, timed interleaved so noise hits all alike."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        c = cost(model, shape)
        out[name] = {
            "params": c.params,
            "macs": c.macs,
            "bn_params": c.bn_params,
            "latency_ms": {},
            "latency_stats": {},
        }
    for b in latency_batches:
        for name, res in compare_latency(models, shape, batch_size=b, threads=threads).items():
            out[name]["latency_ms"][b] = res.median_ms
            out[name]["latency_stats"][b] = res.stats.to_record()
    return out
