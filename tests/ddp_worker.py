"""Run by test_ddp.py under `torchrun --nproc-per-node=2`: DDP-fit a tiny model, dump what each rank saw."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from prunekit.train import TrainConfig, cleanup, fit, init_distributed
from train_helpers import loaders, tiny_net

PER_RANK_BATCH = 16
CFG = TrainConfig(epochs=2, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")


class Interrupt(Exception):
    pass


class GradientEdits:
    """The three training hooks as TPP and TRP use them: a penalty, a gradient edit between backward()
    and the optimiser step (every second step, as TRP's every-m-th-step sub-gradient) and a projection
    after the step."""

    def penalty(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        return 1e-3 * sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)

    def after_backward(self, model: torch.nn.Module, step: int) -> None:
        if step % 2 == 0:
            for p in model.parameters():
                if p.dim() > 1:
                    p.grad.add_(p.detach().sign(), alpha=1e-2)

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        with torch.no_grad():
            next(model.parameters()).clamp_(-0.2, 0.2)


HOOKED_CFG = TrainConfig(epochs=1, lr=0.1, momentum=0.9, schedule="constant")


def interrupt_after_epoch_1(record: dict) -> None:
    if record["epoch"] == 1:
        raise Interrupt


def main(out: Path) -> None:
    info = init_distributed(device="cpu")
    train, val = loaders(PER_RANK_BATCH, rank=info.rank, world_size=info.world_size)
    torch.manual_seed(0)  # the same initial weights as the single-process reference
    model = tiny_net()
    # Every rank is handed a run folder here; only rank 0 may write into its own.
    result = fit(model, train, val, CFG, run_dir=out / f"run{info.rank}", progress=False, dist=info)

    # Interrupted after epoch 1, then resumed; as in the CLI, only rank 0 knows the run folder.
    resume_dir = out / "resumed" if info.is_main else None
    torch.manual_seed(0)
    try:
        fit(tiny_net(), train, val, CFG, run_dir=resume_dir, progress=False, dist=info,
            on_epoch_end=interrupt_after_epoch_1)  # fmt: skip
    except Interrupt:
        pass
    torch.manual_seed(1000 + info.rank)  # other initial weights on every rank: the checkpoint must win
    resumed = tiny_net()
    fit(resumed, train, val, CFG, run_dir=resume_dir, resume=True, progress=False, dist=info)

    torch.manual_seed(0)
    hooked = tiny_net()
    fit(hooked, train, val, HOOKED_CFG, hooks=[GradientEdits()], progress=False, dist=info)

    for name, net in (("weights", model), ("resumed", resumed), ("hooked", hooked)):
        save_file(
            {k: v.contiguous() for k, v in net.state_dict().items()}, out / f"{name}{info.rank}.safetensors"
        )
    report = {"world_size": info.world_size, "is_main": info.is_main, "history": result.history}
    (out / f"result{info.rank}.json").write_text(json.dumps(report))
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
