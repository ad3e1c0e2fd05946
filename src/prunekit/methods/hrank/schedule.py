"""HRank's masked schedules and the real removal that follows them (specs/hrank.md §3.1, §2.2, §5).

HRank's own code never shrinks a network: it zeroes each pruned filter (the conv's weight and bias, and
the γ and β of the BatchNorm channels it feeds) and fine-tunes the full-width model, one stage per
compress_rate entry (`layerwise_prune`), or, as the one-shot ``mode="mask"``, all entries at once
(`mask_prune`). Its FLOPs counter credits those zeros as removed. `remove_dead_channels` then removes
the channels that are truly dead (`zero_channel_plan` → `surgery.apply`), checks that the smaller model
computes the same outputs, and keeps the rest as recorded masks — e.g. a residual block's conv2 filters,
whose output channel stays alive through the identity shortcut. `hrank_prune` is HRank's `prune`: it
reports both counts, the paper's (`hrank_legacy_count`) and the true MACs of the smaller model.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.measure import CONVENTION, cost
from prunekit.measure.hrank_counter import LegacyCost, hrank_legacy_count
from prunekit.methods.base import Pruned, prunable_groups
from prunekit.methods.hrank.criterion import HRank, hrank_scores, hrank_select
from prunekit.methods.hrank.layouts import ArchLayout, conv_rates, layout_for
from prunekit.methods.hrank.linear import hidden_linears, linear_ranks
from prunekit.methods.stage import STAGE_FOLDER, STAGES_LOG, STAGES_STATE
from prunekit.surgery import MaskHandle, MaskSet, apply, attach, fold, record_masks
from prunekit.surgery.dead_channels import zero_channel_plan
from prunekit.surgery.equivalence import check_same_outputs
from prunekit.train import TrainConfig, fit

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage as RunStage

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Stage:
    """One entry of the compress_rate: its convs, rate, kept filters per conv, and the best validation
    top-1 of its fine-tuning (None when the stage was skipped)."""

    entry: int
    layers: tuple[str, ...]
    rate: float
    kept: dict[str, int]
    best_top1: float | None
    trained: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "layers": list(self.layers),
            "rate": self.rate,
            "kept": self.kept,
            "best_top1": self.best_top1,
            "trained": self.trained,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Stage:
        return cls(
            int(record["entry"]),
            tuple(record["layers"]),
            float(record["rate"]),
            {str(k): int(v) for k, v in record["kept"].items()},
            record["best_top1"],
            bool(record["trained"]),
        )


@dataclass
class LayerwiseResult:
    """A full-width model whose pruned filters are exactly zero, the masks that keep them so, and the
    stages that produced it (none for the one-shot mask)."""

    model: nn.Module
    masks: MaskSet
    stages: list[Stage] = field(default_factory=list)


# ---------------------------------------------------------------- HRank's filter masks


def fed_batchnorms(model: nn.Module, example: Tensor) -> dict[str, dict[str, Tensor]]:
    """``{conv: {bn: source}}``: the BatchNorms each conv's outputs reach before any other conv or
    linear, where ``source[j]`` is the conv channel that the BN's channel j normalises, or -1.

    This is the conv's own BN, and for DenseNet every later BN of the block, which sees the channel
    through the concatenations (HRank's "running concat" mask). Found by running the model with every
    conv channel emitting its own number (1, 2, ... over all convs) and every linear and BN emitting
    zeros: a BN's input then carries a channel's number exactly where that channel arrives through ReLU,
    pooling, concatenation, residual adds or index-mapping shortcuts, whatever the forward code does.
    A second run with the numbers reversed tells one source from a sum of several (n + m = total + 1
    only for a single source).
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    starts = dict(
        zip(
            (name for name, _ in convs),
            itertools.accumulate((m.out_channels for _, m in convs), initial=0),
            strict=False,
        )
    )
    total = sum(m.out_channels for _, m in convs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    numbers = torch.arange(1, total + 1, dtype=torch.float32, device=device)
    forward = _numbered_forward(model, example[:1].to(device), starts)
    seen, reverse = forward(numbers), forward(total + 1 - numbers)

    fed: dict[str, dict[str, Tensor]] = {}
    for bn, maps in seen.items():
        high, low = maps.amax(1), maps.amin(1)
        reached = high != 0
        single = (high == low) & (reverse[bn].amax(1) == reverse[bn].amin(1))
        single &= (high + reverse[bn].amax(1) == total + 1) & (high == high.round())
        if not bool(single[reached].all()):
            raise ConfigError(
                f"cannot tell which conv filters BatchNorm {bn!r} normalises (its input sums or scales "
                "several of them); HRank's masks need each BN channel to carry one filter's output"
            )
        index = high.round().long() - 1  # position in the numbering of all conv channels
        for conv, module in convs:
            mine = reached & (index >= starts[conv]) & (index < starts[conv] + module.out_channels)
            if bool(mine.any()):
                fed.setdefault(conv, {})[bn] = torch.where(mine, index - starts[conv], -1).cpu()
    return fed


def _numbered_forward(
    model: nn.Module, example: Tensor, starts: Mapping[str, int]
) -> Callable[[Tensor], dict[str, Tensor]]:
    """A function running `model` with conv `c` emitting ``numbers[starts[c]:]`` as constant maps, linears
    and BNs emitting zeros; returns every BN's input as (channels, everything else)."""
    modules = dict(model.named_modules())

    def run(numbers: Tensor) -> dict[str, Tensor]:
        inputs: dict[str, Tensor] = {}

        def emit(conv: str) -> Callable[..., Tensor]:
            def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
                own = numbers[starts[conv] : starts[conv] + out.shape[1]]
                return own.view(1, -1, *([1] * (out.dim() - 2))).expand_as(out).clone()

            return hook

        def silence(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
            return torch.zeros_like(out)

        def watch(bn: str) -> Callable[..., None]:
            def hook(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
                inputs[bn] = args[0].detach().transpose(0, 1).flatten(1)

            return hook

        handles = []
        for name, module in modules.items():
            if name in starts:
                handles.append(module.register_forward_hook(emit(name)))
            elif isinstance(module, _BATCHNORMS):
                handles += [
                    module.register_forward_pre_hook(watch(name)),
                    module.register_forward_hook(silence),
                ]
            elif isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(silence))
        training = {module: module.training for module in modules.values()}
        try:
            with torch.no_grad():
                model.eval()(example)
        finally:
            for module, flag in training.items():
                module.train(flag)
            for handle in handles:
                handle.remove()
        return inputs

    return run


def filter_masks(
    model: nn.Module,
    kept: Mapping[str, Sequence[int]],
    example: Tensor,
    fed: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> MaskSet:
    """HRank's masks (§2.2) for keeping ``kept[conv]`` filters of each conv: the pruned filters' weight
    rows and bias entries, and γ, β of the BatchNorm channels they feed (`fed_batchnorms`, traced on
    `example` unless given). BN running statistics stay: with γ = β = 0 the BN outputs exactly 0
    whatever they are."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    fed = fed_batchnorms(model, example) if fed is None else fed
    masks = MaskSet({})
    for conv, indices in kept.items():
        module = modules[conv]
        keep = torch.zeros(_width(module), dtype=torch.bool)
        keep[list(indices)] = True
        if bool(keep.all()):
            continue
        rows = {f"{conv}.weight": keep} | ({f"{conv}.bias": keep} if module.bias is not None else {})
        for bn, source in fed.get(conv, {}).items():
            bn_keep = ~torch.isin(source, (~keep).nonzero().flatten())
            # A BN without affine parameters cannot be zeroed; its channel stays masked-only upstream.
            rows |= {f"{bn}.{p}": bn_keep for p in ("weight", "bias") if f"{bn}.{p}" in params}
        masks = masks & MaskSet({k: v.cpu() for k, v in MaskSet.from_groups(model, rows).items()})
    return masks


# ---------------------------------------------------------------- schedules


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _entries(layout: ArchLayout, rates: Mapping[str, float]) -> list[tuple[int, tuple[str, ...], float]]:
    # Entries that name no conv (VGG's 13th) are read but never pruned: no stage, as in HRank.
    return [(k, convs, rates.get(convs[0], 0.0)) for k, convs in enumerate(layout.entries) if convs]


def _hidden_linear_entries(
    method: HRank, model: nn.Module, layout: ArchLayout, calib: Tensor | None, example: Tensor
) -> list[tuple[int, tuple[str, ...], float]]:
    """A uniform ratio reaches the classifier's hidden linear layers as it does for every method: one more
    entry after the convs' (the paper ranks convs only, so its list expressions never add it). Their
    scores are the firing fractions of `methods.hrank.linear`."""
    selection = method.selection
    linears = _uniform_linears(method, model, example)
    if not linears:
        return []
    assert method.scores is not None
    missing = [name for name in linears if name not in method.scores]
    if missing:
        if not isinstance(calib, Tensor):
            raise ConfigError(
                f"HRank needs calibration images to rank the hidden units of {', '.join(missing)}"
            )
        options = method.options
        method.scores |= linear_ranks(model, calib, missing, options.n_images, options.batch_size)
    return [(len(layout.entries), linears, selection.uniform)]


def _uniform_linears(method: HRank, model: nn.Module, example: Tensor) -> tuple[str, ...]:
    """The hidden linears a uniform ratio reaches (none for HRank's own list expressions and rules)."""
    selection = method.selection
    if selection.sequence is not None or selection.rules or selection.uniform is None:
        return ()
    names = [name for group in prunable_groups(model, example) for name in group.members]
    return tuple(hidden_linears(model, names))


def _ensure_scores(
    model: nn.Module, method: HRank, layout: ArchLayout, source: Tensor | Iterable[Any], example: Tensor
) -> None:
    """Rank once, on the dense model, before any mask (HRank issue #15); the hidden linears a uniform ratio
    reaches are scored in the same pass."""
    if method.scores is None:
        method.scores = hrank_scores(
            model,
            source,
            layout.taps,
            n_images=method.options.n_images,
            batch_size=method.options.batch_size,
            linears=_uniform_linears(method, model, example),
        )


def _example(calib: Tensor | None, train: Iterable[Any] | None) -> Tensor:
    if calib is not None:
        return calib[:1]
    for batch in train or ():
        return (batch if isinstance(batch, Tensor) else batch[0])[:1].cpu()
    raise ConfigError("HRank needs images to trace the model: calib is None and the training loader is empty")


def _kept(method: HRank, convs: Sequence[str], rate: float) -> dict[str, list[int]]:
    assert method.scores is not None
    return {conv: hrank_select(method.scores[conv], rate, method.options.tie_break, conv) for conv in convs}


def mask_prune(model: nn.Module, method: HRank, calib: Tensor) -> LayerwiseResult:
    """One-shot masked HRank: every entry's filters zeroed at once on a copy of `model`."""
    layout = layout_for(model)
    entries = _entries(layout, method.conv_rates(model))
    _ensure_scores(model, method, layout, calib, calib[:1])
    entries += _hidden_linear_entries(method, model, layout, calib, calib[:1])
    masked = copy.deepcopy(model)
    kept: dict[str, list[int]] = {}
    for _, convs, rate in entries:
        kept |= _kept(method, convs, rate)
    masks = filter_masks(masked, kept, calib[:1])
    return LayerwiseResult(fold(masked, masks), masks)


def layerwise_prune(
    model: nn.Module,
    method: HRank,
    train: Iterable[Any],
    val: Iterable[Any],
    stage_cfg: TrainConfig,
    *,
    calib: Tensor | None = None,
    run_dir: str | Path | None = None,
    progress: bool | None = False,
    device: str | torch.device | None = None,
    skip_zero_rate_stages: bool | None = None,
    resume: bool = False,
) -> LayerwiseResult:
    """The original HRank schedule (§3.1) on a copy of `model`: rank once on the dense model (`calib`,
    else the training loader), then for each compress_rate entry in order add its filter masks, fine-tune
    `stage_cfg.epochs` epochs with the masks re-applied after every step, and continue from the stage's
    best-validation weights. Stages that prune nothing still train, as in HRank, unless
    `skip_zero_rate_stages` (default: the method's option). Each stage trains with its own seed
    (``stage_cfg.seed + entry``) so stages do not replay one shuffle order. With `run_dir`, stage k's
    training log goes to ``stage{k:03d}/``, its record to ``stages.jsonl`` and the weights after it to
    ``stages_state.safetensors``; `resume` continues such a run after its last finished stage (a stage
    interrupted half-way runs again from its start: its best epoch so far is not kept), and ends with the
    weights of the uninterrupted run, since each stage is seeded on its own."""
    skip = method.options.skip_zero_rate_stages if skip_zero_rate_stages is None else skip_zero_rate_stages
    layout = layout_for(model)
    entries = _entries(layout, method.conv_rates(model))  # a wrong compress_rate fails before any ranking
    train_stages = method.options.train_stages
    if train_stages is not None and max(train_stages) > len(layout.entries):
        raise ConfigError(
            f"train_stages names stage {max(train_stages)}, but {layout.arch} has {len(layout.entries)} "
            f"HRank stages (1..{len(layout.entries)}, one per compress_rate entry)"
        )
    example = _example(calib, train)
    _ensure_scores(model, method, layout, calib if calib is not None else train, example)
    entries += _hidden_linear_entries(method, model, layout, calib, example)
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    fed = fed_batchnorms(model, example)  # the data flow does not change with the weights: trace once
    masks = MaskSet({})
    stages: list[Stage] = []
    finished = _finished_stages(Path(run_dir)) if resume and run_dir is not None else []
    for index, (entry, convs, rate) in enumerate(entries):
        kept = _kept(method, convs, rate)
        masks = masks & filter_masks(model, kept, example, fed)
        if index < len(finished):  # the picks are a function of the dense model: made again, compared
            done, widths = finished[index], {c: len(k) for c, k in kept.items()}
            if (done.entry, done.layers, done.kept) != (entry, tuple(convs), widths):
                raise ConfigError(
                    f"cannot resume: stage {entry} of the run in {run_dir} kept {done.kept}, this run keeps "
                    f"{widths}; the model or the options differ"
                )
            stages.append(done)
            if index == len(finished) - 1:
                _load_stage_weights(model, Path(run_dir) / STAGES_STATE)
            continue
        prunes = any(len(k) < _width(modules[c]) for c, k in kept.items())
        trains = (prunes or not skip) and (train_stages is None or entry + 1 in train_stages)
        handle = attach(model, masks)  # zeroes the new filters now, and every gradient of a masked weight
        try:
            best = None
            if trains:
                stage_dir = Path(run_dir) / f"stage{entry:03d}" if run_dir is not None else None
                cfg = replace(stage_cfg, seed=stage_cfg.seed + entry)
                best = _fine_tune_stage(model, train, val, cfg, handle, stage_dir, progress, device)
        finally:
            handle.remove()
        stage = Stage(entry, convs, rate, {c: len(k) for c, k in kept.items()}, best, trains)
        stages.append(stage)
        if run_dir is not None:
            with open(Path(run_dir) / STAGES_LOG, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(stage.to_json()) + "\n")
            _save_stage_weights(model, Path(run_dir) / STAGES_STATE, len(stages))
    return LayerwiseResult(fold(model, masks), masks, stages)


def _save_stage_weights(model: nn.Module, path: Path, stages: int) -> None:
    from safetensors.torch import save_file

    tensors = {
        name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for name, t in model.state_dict().items()
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"stages": str(stages)})
    tmp.replace(path)  # atomic: the weights and their stage count change together


def _finished_stages(run_dir: Path) -> list[Stage]:
    """The stages a resumed run keeps: as many as the weights file says finished (the log may hold one
    more, written before an interruption). What is after them is removed: the log's extra lines and the
    folders of the stages to run again (their training logs would otherwise be appended to)."""
    from safetensors import SafetensorError, safe_open

    count = 0
    if (run_dir / STAGES_STATE).is_file():
        try:
            with safe_open(run_dir / STAGES_STATE, framework="pt") as f:
                count = int((f.metadata() or {}).get("stages", 0))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot resume: {run_dir / STAGES_STATE} is unreadable ({exc})") from None
    log = run_dir / STAGES_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    if len(lines) < count:
        raise ConfigError(
            f"cannot resume: {STAGES_STATE} in {run_dir} says {count} stages finished, {STAGES_LOG} records "
            f"{len(lines)}"
        )
    try:
        finished = [Stage.from_json(json.loads(line)) for line in lines[:count]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot resume: {log} is corrupt ({exc})") from None
    if len(lines) > count:
        log.write_text("".join(line + "\n" for line in lines[:count]), encoding="utf-8")
    last = finished[-1].entry if finished else -1
    for folder in run_dir.iterdir():
        if STAGE_FOLDER.fullmatch(folder.name) and folder.is_dir() and int(folder.name[5:]) > last:
            shutil.rmtree(folder)
    return finished


def _load_stage_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)


def _fine_tune_stage(
    model: nn.Module,
    train: Iterable[Any],
    val: Iterable[Any],
    cfg: TrainConfig,
    handle: MaskHandle,
    run_dir: Path | None,
    progress: bool | None,
    device: str | torch.device | None,
) -> float | None:
    """Fine-tune one stage and leave `model` at its best-validation epoch (HRank selects every stage on
    the test set); returns that accuracy."""
    best: dict[str, Any] = {"top1": None, "state": None}

    def keep_best(record: dict[str, Any]) -> None:
        top1 = record.get("val_top1")
        if top1 is not None and (best["top1"] is None or top1 > best["top1"]):
            best["top1"] = top1
            best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    fit(
        model,
        train,
        val,
        cfg,
        method=handle,
        run_dir=run_dir,
        progress=progress,
        device=device,
        on_epoch_end=keep_best,
    )
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return best["top1"]


# ---------------------------------------------------------------- real removal and counts


def remove_dead_channels(
    model: nn.Module, masks: Mapping[str, Tensor], example: Tensor
) -> tuple[nn.Module, MaskSet | None, dict[str, int]]:
    """A copy of masked `model` with every channel whose output is exactly zero removed physically, the
    masks still needed on it (recorded, so a saved file keeps them), and the channels removed per layer.
    Raises `SurgeryError` if the smaller model does not compute the masked model's outputs."""
    masked = copy.deepcopy(model).to("cpu").eval()
    example = example.to("cpu")
    record_masks(masked, masks)
    plan = zero_channel_plan(masked, example[:1])
    # `apply` narrows the recorded masks with the weights (the masked elements are zero).
    smaller = apply(masked, plan, example[:1]).eval() if plan else masked
    check_same_outputs(
        masked,
        smaller,
        example,
        what="removing the zeroed channels",
        hint=f"layers: {', '.join(sorted(plan))}",
    )
    widths = {name: m.out_channels for name, m in masked.named_modules() if isinstance(m, nn.Conv2d)}
    removed = {name: widths[name] - len(kept) for name, kept in plan.items() if name in widths}
    remaining = getattr(smaller, "prunekit_masks", None)
    if remaining is not None and all(bool(m.all()) for m in remaining.values()):
        remaining = None
    return smaller, remaining, removed


def paper_cost(
    model: nn.Module, compress_rate: str | Mapping[str, float], input_shape: Sequence[int]
) -> LegacyCost:
    """`hrank_legacy_cost` for `model` itself (its class count and input channels, any architecture):
    HRank's counter, crediting only the removed output filters. `compress_rate` is a list expression (or
    preset) in HRank's entry order, or a rate per conv."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback-taps notice was given when ranking
        layout = layout_for(model)
    if isinstance(compress_rate, str):
        compress_rate = conv_rates(layout, compress_rate)
    rates = {conv: rate for _, convs, rate in _entries(layout, compress_rate) for conv in convs}
    return hrank_legacy_count(model, input_shape, rates, layout.legacy_inputs)


def hrank_prune(method: HRank, model: nn.Module, calib: Tensor | None, stage: RunStage | None) -> Pruned:
    """HRank's `prune`: the one-shot removal (HRankPlus), the one-shot mask, or the layer-wise schedule
    fine-tuned through `stage`; masked results lose their dead channels (`remove_dead_channels`). The
    details report HRank's counter beside the true cost of the returned model."""
    if calib is None:
        raise ConfigError("HRank needs calibration images (calib) to rank feature maps and trace the model")
    options = method.options
    layerwise = options.schedule == "layerwise"
    shape = tuple(calib.shape[1:])
    stages: list[Stage] = []
    removed: dict[str, int] = {}
    masks: MaskSet | None = None
    if layerwise:
        if stage is None or stage.finetune is None:
            raise ConfigError(
                "layerwise HRank fine-tunes after every entry: give the epochs per stage "
                "(--finetune-epochs N, or a fine-tune config to `pipeline.prune_run`); `prunekit.prune` has "
                "no data to train on, use schedule=oneshot there"
            )
        result = layerwise_prune(
            model,
            method,
            stage.train,
            stage.val,
            stage.finetune,
            calib=calib,
            run_dir=stage.run_dir,
            progress=stage.progress,
            device=stage.device,
            resume=stage.resume,
        )
        stages = result.stages
        smaller, masks, removed = remove_dead_channels(result.model, result.masks, calib[:16])
    elif options.mode == "mask":
        result = mask_prune(model, method, calib)
        smaller, masks, removed = remove_dead_channels(result.model, result.masks, calib[:16])
    else:
        smaller = apply(model, method.plan(model, calib), calib[:1])
    legacy = paper_cost(model, method.conv_rates(model), shape)
    true = cost(smaller, shape)
    details = {
        "legacy_flops": legacy.flops,
        "legacy_params": legacy.params,
        "legacy_counter": LegacyCost(0, 0).counter,
        "true_macs": true.macs,
        "true_params": true.params,
        "true_convention": CONVENTION,
        "removed_channels": removed,
        "masked_params": sorted(masks) if masks else [],
        "stages": [s.to_json() for s in stages],
    }
    return Pruned(smaller, masks, details, needs_finetune=not layerwise, budget=method.budget)
