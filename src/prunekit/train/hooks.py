"""Training hooks: what a method (or a mask handle, or anything else) does at each step of `fit`.

A hook is any object with some of

    penalty(model, step) -> Tensor | None     added to the loss (the sparsify stage's regulariser)
    after_backward(model, step) -> None       gradient edits between backward() and the optimiser step
    after_step(model, step) -> None           projections, growing coefficients, re-applied masks

`step` counts optimiser steps from 1 over the whole run (the step being taken, for the first two). Under
DistributedDataParallel every rank calls every hook with the same step on identical weights: a penalty
enters each rank's loss once and DDP averages the (identical) penalty gradients, so nothing is counted
twice; gradient edits see the already averaged gradients and edit them alike on every rank.

A hook whose behaviour depends on more than the weights (a step counter, a growing coefficient, choices
made during training) also defines

    hook_state() -> dict                      tensors and plain containers (read back with weights_only)
    load_hook_state(state) -> None            restores it

so the per-epoch checkpoint holds it and `fit(resume=True)` continues the hook exactly where it stopped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from prunekit.errors import CheckpointError


def _takes_step(fn: Callable[..., Any]) -> bool:
    """Older hooks define ``penalty(model)`` without the step; they keep working."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


class Hooks:
    """The hooks of one `fit` call, called in the order given."""

    def __init__(self, hooks: Sequence[Any]) -> None:
        hooks = [h for h in hooks if h is not None]
        self._penalties = [
            (fn, _takes_step(fn)) for fn in (getattr(h, "penalty", None) for h in hooks) if callable(fn)
        ]
        self._after_backward = [
            fn for fn in (getattr(h, "after_backward", None) for h in hooks) if callable(fn)
        ]
        self._after_step = [fn for fn in (getattr(h, "after_step", None) for h in hooks) if callable(fn)]
        self._stateful = [h for h in hooks if callable(getattr(h, "hook_state", None))]

    @property
    def has_penalty(self) -> bool:
        return bool(self._penalties)

    def penalty(self, model: nn.Module, step: int) -> Tensor | None:
        total: Tensor | None = None
        for fn, takes_step in self._penalties:
            term = fn(model, step) if takes_step else fn(model)
            if term is not None:
                total = term if total is None else total + term
        return total

    def after_backward(self, model: nn.Module, step: int) -> None:
        for fn in self._after_backward:
            fn(model, step)

    def after_step(self, model: nn.Module, step: int) -> None:
        for fn in self._after_step:
            fn(model, step)

    def state(self) -> list[dict[str, Any]]:
        """The state of every stateful hook, in order, for the checkpoint."""
        return [{"hook": type(h).__name__, "state": h.hook_state()} for h in self._stateful]

    def load_state(self, states: list[dict[str, Any]] | None) -> None:
        """Restore what `state` saved; a checkpoint written with other (or no) stateful hooks cannot
        continue them exactly and is refused."""
        saved = [s["hook"] for s in states or ()]
        wanted = [type(h).__name__ for h in self._stateful]
        if saved != wanted:
            raise CheckpointError(
                f"the checkpoint holds the state of {saved or 'no'} training hooks, this run has "
                f"{wanted or 'none'}; it was written by another run (or an older prunekit) and cannot be "
                "continued exactly: restart the run"
            )
        for hook, s in zip(self._stateful, states or (), strict=True):
            hook.load_hook_state(s["state"])
