"""The runs behind the CLI and the one-call Python API.

train: data → model → fit → run folder. prune: checkpoint → (sparsify) → plan → surgery → fine-tune →
evaluate → run folder. Every stage writes the same run-folder layout so runs can be compared.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import model_file as checkpoint
from prunekit.data import build_loaders
from prunekit.errors import ConfigError
from prunekit.measure import CONVENTION, compare_latency, cost, sparsity_report
from prunekit.methods import Method, create_method, method_class
from prunekit.methods.hrank import HRank
from prunekit.methods.hrank.schedule import hrank_run
from prunekit.models import create, default_input_shape
from prunekit.report import RunFolder, comparison_markdown, plot_curves, plot_widths
from prunekit.report.tables import ComparisonRow
from prunekit.surgery import MaskSet, apply, attach, record_masks
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.distributed import DistInfo, cleanup, init_distributed


@dataclass
class DataSpec:
    name: str
    root: str | None = None
    download: bool = True
    batch_size: int = 128
    eval_batch_size: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    normalize: bool = True  # False: pixels in [0, 1], as scripts that use only ToTensor()
    options: dict[str, Any] = field(default_factory=dict)  # dataset keywords (e.g. synthetic shape)

    def loaders(self, device: torch.device, *, rank: int = 0, world_size: int = 1) -> tuple[Any, Any, Any]:
        """(train loader, test loader, train split) of this dataset on `device`."""
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
            normalize=self.normalize,
            **self.options,
        )

    @classmethod
    def of_checkpoint(cls, info: dict[str, Any], path: str | Path) -> DataSpec:
        """The dataset a model file was trained on, as recorded in its info."""
        if not info.get("dataset"):
            raise ConfigError(f"{path} does not record its dataset; pass --data")
        return cls(info["dataset"], normalize=info.get("normalize", True))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def input_shape_of(dataset: Any) -> tuple[int, int, int]:
    return tuple(int(s) for s in dataset.shape)  # type: ignore[return-value]


def check_runs_on(model: nn.Module, shape: tuple[int, int, int], what: str) -> None:
    """Fail before training, with the shapes named, when the architecture cannot take the data's images."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    except RuntimeError as exc:
        raise ConfigError(
            f"{what}: the model cannot run on {'x'.join(map(str, shape))} images ({str(exc).splitlines()[0]})"
        ) from None
    finally:
        model.train(was_training)


def measure_model(
    model: nn.Module, input_shape: tuple[int, int, int], latency_batches: tuple[int, ...], threads: int = 1
) -> dict[str, Any]:
    """Params, MACs (with the convention sentence) and deployed latency per batch size."""
    measured = compare_models({"model": model}, input_shape, latency_batches, threads)["model"]
    return {**measured, "convention": CONVENTION, "latency_threads": threads}


def train_run(
    arch: str,
    data: DataSpec,
    cfg: TrainConfig,
    out: str | Path,
    *,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    device: str | None = None,
    teacher_path: str | None = None,
    latency_batches: tuple[int, ...] = (1,),
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
            device=device,
            teacher_path=teacher_path,
            latency_batches=latency_batches,
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
    device: str | None,
    teacher_path: str | None,
    latency_batches: tuple[int, ...],
    progress: bool | None,
    config_record: dict[str, Any] | None,
) -> dict[str, Any]:
    dev = dist.device if dist.world_size > 1 else resolve_device(device)
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
    teacher = checkpoint.load(teacher_path, device=dev).eval() if teacher_path else None
    run = RunFolder(out, exist_ok=True) if dist.is_main else None
    if run is not None and config_record is not None:
        run.write_config(config_record)
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
    summary: dict[str, Any] = {}
    if run is not None:
        model = model.to("cpu").eval()
        measured = measure_model(model, shape, latency_batches)
        summary = {
            "kind": "train",
            "arch": arch,
            "dataset": data.name,
            "input_shape": list(shape),
            "top1": result.final_top1,
            "best_top1": result.best_top1,
            "epochs": result.epochs_run,
            "wall_time_s": time.time() - started,
            **measured,
        }
        info = {
            "top1": result.final_top1,
            "macs": measured["macs"],
            "dataset": data.name,
            "normalize": data.normalize,
            "input_shape": list(shape),
        }
        checkpoint.save(model, run.file("model.safetensors"), info=info)
        history = run.read_log() or list(result.history)
        plots = []
        if history:
            plots.append(plot_curves(history, run.file("curves.png"), title=f"{arch} on {data.name}").name)
        run.write_summary(summary)
        row = ComparisonRow(
            arch, result.final_top1, measured["params"], measured["macs"], measured["latency_ms"]
        )
        run.write_text("report.md", _report_md(f"Training run: {arch} on {data.name}", [row], summary, plots))
    return summary


def evaluate_checkpoint(path: str, data: DataSpec, device: str | None = None) -> dict[str, Any]:
    dev = resolve_device(device)
    model = checkpoint.load(path, device=dev)
    _, val_loader, _ = dataclasses.replace(data, limit_train=1).loaders(dev)
    return evaluate(model, val_loader, device=dev)


def load_for_profile(
    target: str, input_shape: tuple[int, ...] | None
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A checkpoint path or a zoo name → (model, per-image input shape)."""
    if Path(target).suffix == ".safetensors" or Path(target).is_file():
        model = checkpoint.load(target)
        shape = input_shape or tuple(model.prunekit_info.get("input_shape", ()))
        if not shape:
            arch = model.prunekit_arch
            shape = default_input_shape(arch["name"], arch["kwargs"].get("in_channels"))
        return model, tuple(shape)  # type: ignore[return-value]
    model = create(target)
    return model, tuple(input_shape) if input_shape else default_input_shape(target)  # type: ignore[return-value]


def _report_md(title: str, rows: list[ComparisonRow], summary: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# {title}", "", comparison_markdown(rows)]
    if "wall_time_s" in summary:
        lines.append(f"Wall time: {summary['wall_time_s']:.1f} s.\n")
    lines += [f"![{name}]({name})\n" for name in plots]
    return "\n".join(lines)


# ---------------------------------------------------------------- pruning


def build_method(
    method: str,
    *,
    ratio: float | None = None,
    ratios: str | None = None,
    target_macs: float | None = None,
    speedup: float | None = None,
    options: dict[str, Any] | None = None,
) -> Method:
    """A configured method; the layer selection (one of ratio / ratios / target_macs / speedup) goes to the
    method's own selection option (`rates` for per-layer criteria, `ratio` for global ones)."""
    candidates = {"ratio": ratio, "ratios": ratios, "target_macs": target_macs, "speedup": speedup}
    given = {k: v for k, v in candidates.items() if v is not None}
    if len(given) > 1:
        raise ConfigError(f"give one of ratio / ratios / target_macs / speedup, not {', '.join(given)}")
    opts = dict(options or {})
    fields = getattr(method_class(method).Options, "__dataclass_fields__", {})
    if given:
        ((key, value),) = given.items()
        if "rates" in fields:
            selection = {
                "ratio": str(value),
                "ratios": str(value),
                "target_macs": f"target_macs={value}",
                "speedup": f"speedup={value}",
            }[key]
            opts["rates"] = selection
        elif "ratio" in fields and key == "ratio":
            opts["ratio"] = float(value)
        else:
            raise ConfigError(f"method {method!r} does not take {key}; its options: {', '.join(fields)}")
    return create_method(method, **opts)


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    method: str = "l1",
    *,
    ratio: float | None = None,
    ratios: str | None = None,
    target_macs: float | None = None,
    speedup: float | None = None,
    calib: torch.Tensor | None = None,
    **options: Any,
) -> nn.Module:
    """One-shot pruning: score with `method`, remove channels physically, return the smaller model.

    The input model is not modified. `calib` (a batch of real inputs) feeds data-driven criteria; without it
    `example_input` is used. Methods that need a sparsify stage (slimming, ...) should be run through
    `prune_run`/`prunekit prune --sparsify-epochs`; here their plan is taken from the weights as they are.
    """
    m = build_method(
        method, ratio=ratio, ratios=ratios, target_macs=target_macs, speedup=speedup, options=options
    )
    calib = example_input if calib is None else calib
    pruned, _ = run_method(m, model, calib)
    return pruned


def run_method(method: Method, model: nn.Module, calib: torch.Tensor) -> tuple[nn.Module, MaskSet | None]:
    """Apply a configured method to a copy of `model`: (smaller model, masks of zeros it must keep or None).

    Methods that threshold weights themselves (DeepHoyer) expose `prune(model, calib)`; the rest give a
    channel plan that the surgery applies. Masks are recorded as an edit, so the saved file keeps them."""
    method.prepare(model, calib)
    if callable(getattr(method, "prune", None)):
        result = method.prune(model, calib)
        if not any(not bool(m.all()) for m in result.masks.values()):
            return result.model, None
        record_masks(result.model, result.masks)
        return result.model, result.model.prunekit_masks
    return apply(model, method.plan(model, calib), calib[:1]), None


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by name."""
    return {
        name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


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


@dataclass
class PruneSpec:
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    ratios: str | None = None
    target_macs: float | None = None
    speedup: float | None = None
    calib_images: int = 128


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
    progress: bool | None = None,
    config_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """checkpoint → (sparsify) → plan → surgery → (fine-tune) → evaluate → run folder `out`."""
    started = time.time()
    dense, data, train_loader, val_loader, shape, run, dev = _open_stage(
        checkpoint_path, data, out, device, config_record
    )
    method = build_method(
        spec.method,
        ratio=spec.ratio,
        ratios=spec.ratios,
        target_macs=spec.target_macs,
        speedup=spec.speedup,
        options=spec.options,
    )
    dense_eval = evaluate(dense, val_loader, device=dev)
    model = dense
    if sparsify is not None and sparsify.epochs > 0:
        if not type(method).needs_sparsify():
            raise ConfigError(f"method {spec.method!r} has no sparsify stage; drop --sparsify-epochs")
        model = checkpoint.load(checkpoint_path, device="cpu")  # keep `dense` as the reference
        fit(
            model,
            train_loader,
            val_loader,
            sparsify,
            method=method,
            run_dir=run.path / "sparsify",
            progress=progress,
            device=dev,
        )
    calib = calibration_batch(train_loader, spec.calib_images).to("cpu")
    model = model.to("cpu").eval()
    widths_before = layer_widths(model)
    hrank_summary: dict[str, Any] | None = None
    if isinstance(method, HRank):
        # HRank has schedules of its own (layer-wise stages are the fine-tuning; masked configs) and
        # reports both counts: HRank's paper convention and the true cost of the smaller model.
        outcome = hrank_run(
            model,
            method,
            train_loader,
            val_loader,
            finetune,
            calib=calib,
            run_dir=run.path,
            progress=progress,
            device=dev,
        )
        pruned, masks, hrank_summary = outcome.model, outcome.masks, outcome.summary()
        finetune = finetune if outcome.needs_finetune else None
    else:
        pruned, masks = run_method(method, model, calib)
    widths_after = layer_widths(pruned)
    pruned_eval = evaluate(pruned, val_loader, device=dev)
    history: list[dict[str, Any]] = []
    if finetune is not None and finetune.epochs > 0:
        handle = attach(pruned, masks) if masks else None
        result = fit(
            pruned,
            train_loader,
            val_loader,
            finetune,
            method=handle,
            run_dir=run.path,
            progress=progress,
            device=dev,
        )
        history = run.read_log() or list(result.history)
        final_top1 = result.final_top1
    else:
        final_top1 = pruned_eval["top1"]
    pruned = pruned.to("cpu").eval()
    dense = dense.to("cpu").eval()
    measured = compare_models({"dense": dense, "pruned": pruned}, shape, latency_batches)
    summary: dict[str, Any] = {
        "kind": "prune",
        "method": spec.method,
        "selection": {k: v for k, v in vars(spec).items() if k != "options" and v is not None},
        "options": spec.options,
        "dataset": data.name,
        "input_shape": list(shape),
        "dense": {"top1": dense_eval["top1"], **measured["dense"]},
        "pruned": {"top1_before_finetune": pruned_eval["top1"], "top1": final_top1, **measured["pruned"]},
        "mac_speedup": measured["dense"]["macs"] / max(1, measured["pruned"]["macs"]),
        "widths_before": widths_before,
        "widths_after": widths_after,
        "sparsity": sparsity_report(pruned).to_dict() if masks else None,
        "budget": vars(method.budget) if getattr(method, "budget", None) is not None else None,
        "wall_time_s": time.time() - started,
        **({"hrank": hrank_summary} if hrank_summary is not None else {}),
    }
    info = {
        "top1": final_top1,
        "macs": measured["pruned"]["macs"],
        "dataset": data.name,
        "normalize": data.normalize,
        "input_shape": list(shape),
        "method": spec.method,
    }
    checkpoint.save(pruned, run.file("model.safetensors"), info=info)
    plots = [
        plot_widths(
            widths_before,
            widths_after,
            run.file("widths.png"),
            title=f"{spec.method}: output channels per layer",
        ).name
    ]
    if history:
        plots.append(
            plot_curves(history, run.file("curves.png"), title=f"fine-tuning after {spec.method}").name
        )
    run.write_summary(summary)
    rows = [
        ComparisonRow(
            "dense",
            dense_eval["top1"],
            measured["dense"]["params"],
            measured["dense"]["macs"],
            measured["dense"]["latency_ms"],
        ),
        ComparisonRow(
            spec.method,
            final_top1,
            measured["pruned"]["params"],
            measured["pruned"]["macs"],
            measured["pruned"]["latency_ms"],
            note=f"{pruned_eval['top1']:.2f} % before fine-tuning",
        ),
    ]
    run.write_text("report.md", _report_md(f"Pruning run: {spec.method}", rows, summary, plots))
    return summary


def finetune_run(
    checkpoint_path: str | Path,
    data: DataSpec | None,
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    latency_batches: tuple[int, ...] = (1,),
    progress: bool | None = None,
    config_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune a (pruned) model file; masks stored in it are kept exactly zero."""
    started = time.time()
    model, data, train_loader, val_loader, shape, run, dev = _open_stage(
        checkpoint_path, data, out, device, config_record
    )
    masks = getattr(model, "prunekit_masks", None)
    handle = attach(model, masks) if masks else None
    result = fit(
        model,
        train_loader,
        val_loader,
        cfg,
        method=handle,
        run_dir=run.path,
        resume=resume,
        progress=progress,
        device=dev,
    )
    model = model.to("cpu").eval()
    measured = measure_model(model, shape, latency_batches)
    summary = {
        "kind": "finetune",
        "source": str(checkpoint_path),
        "dataset": data.name,
        "top1": result.final_top1,
        "best_top1": result.best_top1,
        "epochs": result.epochs_run,
        "wall_time_s": time.time() - started,
        **measured,
    }
    info = {
        **model.prunekit_info,
        "top1": result.final_top1,
        "dataset": data.name,
        "normalize": data.normalize,
        "input_shape": list(shape),
    }
    checkpoint.save(model, run.file("model.safetensors"), info=info)
    plots = []
    history = run.read_log() or list(result.history)
    if history:
        plots.append(plot_curves(history, run.file("curves.png"), title="fine-tuning").name)
    run.write_summary(summary)
    row = ComparisonRow(
        "fine-tuned", result.final_top1, measured["params"], measured["macs"], measured["latency_ms"]
    )
    run.write_text("report.md", _report_md("Fine-tuning run", [row], summary, plots))
    return summary


def _open_stage(
    checkpoint_path: str | Path,
    data: DataSpec | None,
    out: str | Path,
    device: str | None,
    config_record: dict[str, Any] | None,
) -> tuple[nn.Module, DataSpec, Any, Any, tuple[int, int, int], RunFolder, torch.device]:
    """What a run that starts from a model file needs: the model (on CPU), its dataset (recorded in the
    file unless given), the loaders, the per-image shape, the run folder (config written) and the device."""
    dev = resolve_device(device)
    model = checkpoint.load(checkpoint_path, device="cpu")
    data = data or DataSpec.of_checkpoint(model.prunekit_info, checkpoint_path)
    train_loader, val_loader, train_set = data.loaders(dev)
    run = RunFolder(out)
    if config_record is not None:
        run.write_config(config_record)
    return model, data, train_loader, val_loader, input_shape_of(train_set), run, dev


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
        out[name] = {"params": c.params, "macs": c.macs, "bn_params": c.bn_params, "latency_ms": {}}
    for b in latency_batches:
        for name, res in compare_latency(models, shape, batch_size=b, threads=threads).items():
            out[name]["latency_ms"][b] = res.median_ms
    return out
