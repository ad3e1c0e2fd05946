"""fit / evaluate: the training loop a reader can follow in one sitting.

Loaders yield `(x float32 NCHW, y int64)` already on the device, report `len()` batches per epoch, and may
offer `set_epoch(epoch)` (the epoch's shuffle) — `prunekit.data.DeviceLoader` is one. Running sums stay on
the device; the host syncs once per epoch (and every ~0.5 s only when a live progress bar is shown).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from prunekit.errors import ConfigError, DataError, PrunekitError
from prunekit.train.config import TrainConfig
from prunekit.train.distributed import DistInfo, all_reduce_sum, broadcast_from_main
from prunekit.train.hooks import Hooks
from prunekit.train.losses import training_losses
from prunekit.train.metrics import topk_correct
from prunekit.train.optim import build_optimizer
from prunekit.train.progress import EpochReporter, make_reporter
from prunekit.train.rng import rng_state, seed_everything, set_rng_state
from prunekit.train.runlog import append_record, reconcile_epochs
from prunekit.train.schedules import LRSchedule
from prunekit.train.trainer_state import load_checkpoint, save_checkpoint

BAR_REFRESH_S = 0.5


class Loader(Protocol):
    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # one record per completed epoch (the same as the log.jsonl lines)
    best_top1: float | None
    final_top1: float | None
    epochs_run: int  # epochs completed in total, including those before a resume
    wall_time_s: float  # of this call


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`"auto"` → bf16 on CUDA, none on CPU (CPU bf16 autocast is slower than fp32 on most hosts)."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if amp in ("auto", "off"):
        return None
    raise ConfigError(f"amp must be one of auto, bf16, off; got {amp!r}")


def fit(
    model: nn.Module,
    train: Loader,
    val: Loader,
    cfg: TrainConfig,
    *,
    method: Any = None,
    hooks: Sequence[Any] = (),
    teacher: nn.Module | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    dist: DistInfo | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train `model` in place for `cfg.epochs` epochs, evaluating on `val` every `cfg.eval_every` epochs and
    after the last one.

    `hooks` (and `method`, one more hook) may define `penalty(model, step) -> Tensor | None` (added to the
    loss), `after_backward(model, step)` (gradient edits before the optimizer step) and
    `after_step(model, step)` (after every optimizer step); `step` counts steps from 1 over the whole run
    (`train.hooks`). With `run_dir` the
    main rank appends each epoch to `log.jsonl` and checkpoints atomically; `resume=True` continues from
    that checkpoint exactly. Under torchrun (`dist.world_size > 1`) the model is wrapped in
    DistributedDataParallel and metrics are summed over ranks, so every rank returns the same numbers;
    only the main rank reads or writes `run_dir`. `on_epoch_end(record)` runs after each epoch's checkpoint.
    """
    started = time.perf_counter()
    is_main = dist is None or dist.is_main
    device = _resolve_device(device, dist, train)
    schedule = LRSchedule.from_config(cfg, len(train))
    amp_dtype = autocast_dtype(cfg.amp, device)
    # "auto": NHWC whenever there are convolutions, on CPU too: ResNet-20 training steps measured 1.36×
    # faster on the 2-vCPU development machine (docs/benchmarks.md), and cuDNN/bf16 prefer it on GPU.
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and has_conv)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    if channels_last:
        for m in (model, teacher):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)

    history: list[dict[str, Any]] = []
    best: float | None = None
    step = 0
    run_hooks = Hooks([*hooks, method])
    if resume:
        state = _resume_state(run_dir, model, device, cfg, schedule, dist)
        optimizer.load_state_dict(state["optimizer"])
        run_hooks.load_state(state.get("hooks"))
        step, best, history = state["step"], state["best_top1"], list(state["history"])
        set_rng_state(state["rng"])
        if is_main and run_dir is not None:
            reconcile_epochs(run_dir, history)
    else:
        seed_everything(cfg.seed)
        if is_main and run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)

    net: nn.Module = model
    if dist is not None and dist.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    run = _Run(
        net,
        model,
        optimizer,
        schedule,
        cfg,
        device,
        amp_dtype,
        channels_last,
        teacher,
        run_hooks,
        dist,
    )
    reporter = make_reporter(progress, cfg.epochs, enabled=is_main)
    try:
        for epoch in range(len(history), cfg.epochs):
            record, step = _train_epoch(run, train, epoch, step, reporter)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                metrics = evaluate(model, val, device=device, amp=cfg.amp, dist=dist)
                record.update(val_loss=metrics["loss"], val_top1=metrics["top1"], val_top5=metrics["top5"])
                best = metrics["top1"] if best is None else max(best, metrics["top1"])
            history.append(record)
            if is_main and run_dir is not None:
                trainer_state = {
                    "epoch": epoch + 1,
                    "step": step,
                    "steps_per_epoch": schedule.steps_per_epoch,
                    "best_top1": best,
                    "history": history,
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(),
                    "config": cfg.to_dict(),
                    "hooks": run_hooks.state(),  # e.g. TPP's λ clock: continued exactly on resume
                }
                save_checkpoint(run_dir, model, trainer_state)
                append_record(run_dir, record)
            if reporter is not None:
                reporter.end_epoch(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
    finally:
        if reporter is not None:
            reporter.close()
    final = history[-1].get("val_top1") if history else None
    return FitResult(history, best, final, len(history), time.perf_counter() - started)


def _resume_state(
    run_dir: str | os.PathLike[str] | None,
    model: nn.Module,
    device: torch.device,
    cfg: TrainConfig,
    schedule: LRSchedule,
    dist: DistInfo | None,
) -> dict[str, Any]:
    """The main rank reads the checkpoint; under DDP it hands the trainer state (or its error, so no rank
    waits forever) to the others, whose weights DistributedDataParallel then copies from rank 0. So only
    rank 0 needs the run folder, as on a multi-node run without a shared file system."""
    state: dict[str, Any] | None = None
    error: PrunekitError | None = None
    if dist is None or dist.is_main:
        try:
            if run_dir is None:
                raise ConfigError("resume=True needs run_dir, the run folder whose checkpoint to continue")
            state = load_checkpoint(run_dir, model, device)
            if state["steps_per_epoch"] != schedule.steps_per_epoch:
                raise ConfigError(
                    f"cannot resume exactly: the checkpoint was trained with {state['steps_per_epoch']} "
                    f"batches per epoch, this loader has {schedule.steps_per_epoch}; use the same data and "
                    "batch size"
                )
            if state["epoch"] > cfg.epochs:
                raise ConfigError(
                    f"the checkpoint in {run_dir} already has {state['epoch']} epochs, more than "
                    f"epochs={cfg.epochs}; raise epochs to continue it"
                )
        except PrunekitError as exc:
            error = exc
    state, error = broadcast_from_main((state, error), dist)
    if error is not None:
        raise error
    assert state is not None
    return state


@dataclass
class _Run:
    """What every training step of one `fit` call needs. `net` is `model` as trained (DDP and/or compiled);
    hooks, checkpoints and evaluation see the plain `model`."""

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    cfg: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    teacher: nn.Module | None
    hooks: Hooks
    dist: DistInfo | None


def _train_epoch(
    run: _Run, train: Loader, epoch: int, step: int, reporter: EpochReporter | None
) -> tuple[dict[str, Any], int]:
    """One pass over `train`: the epoch's record (train metrics summed over ranks) and the new step."""
    net, model, optimizer, schedule, cfg = run.net, run.model, run.optimizer, run.schedule, run.cfg
    net.train()
    if hasattr(train, "set_epoch"):
        train.set_epoch(epoch)
    hooks = run.hooks
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # loss·n, correct, penalty, samples, distillation term·n
    sums = torch.zeros(5, dtype=torch.float64, device=run.device)
    seen = 0
    lr = schedule(step)
    t0 = last_shown = time.perf_counter()
    if reporter is not None:
        reporter.start_epoch(epoch + 1, schedule.steps_per_epoch)
    for i, (x, y) in enumerate(train):
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            run.device.type, dtype=run.amp_dtype or torch.bfloat16, enabled=run.amp_dtype is not None
        ):
            logits = net(x)
            teacher_logits = None
            if run.teacher is not None:
                with torch.no_grad():
                    teacher_logits = run.teacher(x)
        loss, kd = training_losses(
            logits,
            y,
            label_smoothing=cfg.label_smoothing,
            teacher_logits=teacher_logits,
            temperature=cfg.kd_temperature,
            alpha=cfg.kd_alpha,
        )
        total = loss
        penalty = hooks.penalty(model, step + 1) if hooks.has_penalty else None
        if penalty is not None:
            total = loss + penalty
            sums[2] += penalty.detach()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        hooks.after_backward(model, step + 1)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        hooks.after_step(model, step)
        n = y.shape[0]
        seen += n
        sums[0] += loss.detach() * n
        if kd is not None:
            sums[4] += kd.detach() * n
        sums[1] += (logits.detach().argmax(dim=1) == y).sum()
        if reporter is not None and reporter.live:
            now = time.perf_counter()
            if now - last_shown >= BAR_REFRESH_S or i + 1 == schedule.steps_per_epoch:
                loss_sum, correct = sums[:2].tolist()
                reporter.update(
                    i + 1,
                    loss=loss_sum / seen,
                    top1=100.0 * correct / seen,
                    lr=lr,
                    images_per_s=seen / (now - t0),
                )
                last_shown = now
    if seen == 0:
        raise DataError("the training loader yielded no batches")
    sums[3] = seen
    loss_sum, correct, penalty_sum, samples, kd_sum = all_reduce_sum(sums, run.dist).tolist()  # one sync
    elapsed = time.perf_counter() - t0
    batches = i + 1
    record: dict[str, Any] = {
        "kind": "epoch",
        "epoch": epoch + 1,
        "time": time.time(),
        "step": step,
        "lr": lr,
        "train_loss": loss_sum / samples,
        "train_top1": 100.0 * correct / samples,
        "images_per_s": samples / elapsed,
        "epoch_time_s": elapsed,
    }
    if run.teacher is not None:
        record["train_kd_loss"] = kd_sum / samples  # T²·KL(teacher ‖ student), before the kd_alpha weight
    if hooks.has_penalty:
        world = run.dist.world_size if run.dist is not None else 1
        record["train_penalty"] = penalty_sum / (batches * world)
    return record, step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: str | torch.device | None = None,
    amp: str = "auto",
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (percent) and the sample count; summed over ranks under DDP.
    `device=None` evaluates where the model's parameters are."""
    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    amp_dtype = autocast_dtype(amp, device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, samples
    seen = 0
    try:
        for x, y in loader:
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
            ):
                logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            sums[1:3] += topk_correct(logits, y, (1, 5))
            seen += y.shape[0]
    finally:
        model.train(was_training)
    sums[3] = seen
    loss_sum, top1, top5, samples = all_reduce_sum(sums, dist).tolist()
    if samples == 0:
        raise DataError("the evaluation loader yielded no samples")
    return {
        "loss": loss_sum / samples,
        "top1": 100.0 * top1 / samples,
        "top5": 100.0 * top5 / samples,
        "samples": int(samples),
    }


def _resolve_device(device: str | torch.device | None, dist: DistInfo | None, train: Loader) -> torch.device:
    """Explicit device, else the rank's device under torchrun, else the loader's, else CUDA when present."""
    if device is not None:
        return torch.device(device)
    if dist is not None and dist.distributed:
        return dist.device
    loader_device = getattr(train, "device", None)
    if loader_device is not None:
        return torch.device(loader_device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
