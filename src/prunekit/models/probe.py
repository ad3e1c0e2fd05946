"""Running a model once to observe it: the forward that hooks (cost counting, selection, tracing) rely on,
and what such a forward tells about the data flow (which BatchNorm reads a layer's output)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle


@contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Eval mode for every module of `models` inside the block; on leaving it, also by an exception, each
    module's own train/eval flag is what it was before (a model that mixes modes keeps its mix).

    Gradients are untouched: add ``torch.no_grad()`` for an ordinary forward (tracing needs autograd)."""
    # Each flag is set directly: `module.train(flag)` would recurse and overwrite the children's flags.
    modes = {m: m.training for model in models for m in model.modules()}
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def probe(model: nn.Module, example: torch.Tensor, hooks: Iterable[RemovableHandle] = ()) -> torch.Tensor:
    """One forward of `example` in eval mode without autograd; afterwards `hooks` are removed and every
    module's train/eval flag is restored, whether the forward succeeded or not."""
    handles = list(hooks)
    try:
        with evaluating(model), torch.no_grad():
            return model(example)
    finally:
        for handle in handles:
            handle.remove()


def batchnorm_after(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """{Conv2d/Linear name: name of the BatchNorm whose input is exactly that layer's output tensor}, found
    by running `example`, so it holds for any forward code (not only module registration order). A layer
    whose output reaches a BatchNorm only through another op (an add, a concatenation, an activation) has
    no entry; of several BatchNorms reading the same output, the first to run is named."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is held so its id cannot be reused
    found: dict[str, str] = {}

    def on_layer(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        produced[id(output)] = (names[module], output)

    def on_batchnorm(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        entry = produced.get(id(inputs[0]))
        if entry is not None and entry[1] is inputs[0]:
            found.setdefault(entry[0], names[module])

    modules = list(model.modules())
    probe(
        model,
        example,
        [m.register_forward_hook(on_layer) for m in modules if isinstance(m, (nn.Conv2d, nn.Linear))]
        + [m.register_forward_pre_hook(on_batchnorm) for m in modules if isinstance(m, _BatchNorm)],
    )
    return found
