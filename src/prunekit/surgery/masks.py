"""Element-wise and group masks on parameters: freeze pruned weights at exactly zero while training.

A `MaskSet` maps parameter names (``model.named_parameters()``) to bool tensors of the parameter's
shape; True keeps the element. Group masks (whole filters, input channels, rows, columns) are the same
thing with a 1-D keep vector expanded along one dimension, so every consumer sees one form.

`attach` zeroes the masked weights and their gradients; `MaskHandle.reapply` (also its
`after_step`, so the handle can be given to the trainer as a method) re-zeroes the weights after each
optimizer step, because momentum filled before masking, decoupled weight decay or a pre-filled Adam
state would otherwise move them. `fold` makes the zeros permanent and leaves no hooks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError, SurgeryError


def _as_bool(name: str, mask: object) -> Tensor:
    if not isinstance(mask, Tensor):
        raise ConfigError(f"mask for {name!r} must be a tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ConfigError(
            f"mask for {name!r} has dtype {mask.dtype} with values other than 0 and 1; "
            "pass a bool tensor (True = keep)"
        )
    return mask != 0


def _default_params(model: nn.Module) -> list[str]:
    # Conv and linear weights: the tensors whose zeros save MACs. Biases and BN stay dense by default.
    return [name for name, p in model.named_parameters() if p.dim() >= 2]


def _lookup(params: Mapping[str, nn.Parameter], name: str) -> nn.Parameter:
    if name not in params:
        close = difflib.get_close_matches(name, list(params), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"no parameter named {name!r} in the model{hint}")
    return params[name]


class MaskSet(Mapping[str, Tensor]):
    """``{parameter name: bool mask}``; integer or float 0/1 masks are converted, anything else refused."""

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks = {name: _as_bool(name, mask) for name, mask in masks.items()}

    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        kept = sum(int(m.sum()) for m in self._masks.values())
        total = sum(m.numel() for m in self._masks.values())
        return f"MaskSet({len(self)} tensors, {kept}/{total} kept)"

    def __and__(self, other: Mapping[str, Tensor]) -> MaskSet:
        """Keep an element only if both keep it; a name missing on one side is kept there."""
        other = other if isinstance(other, MaskSet) else MaskSet(other)
        merged = dict(self._masks)
        for name, mask in other.items():
            merged[name] = merged[name] & mask if name in merged else mask
        return MaskSet(merged)

    @classmethod
    def from_threshold(
        cls,
        model: nn.Module,
        threshold: float | Mapping[str, float],
        params: Iterable[str] | None = None,
    ) -> MaskSet:
        """Prune elements with ``|w| < threshold`` (strict, as DeepHoyer: |w| = t survives).

        A mapping gives one threshold per parameter and selects those parameters. With a single value,
        `params` selects them (default: every parameter with ≥ 2 dims, i.e. conv and linear weights).
        """
        if isinstance(threshold, Mapping):
            if params is not None:
                raise ConfigError("give either per-parameter thresholds or `params`, not both")
            thresholds = dict(threshold)
        else:
            names = _default_params(model) if params is None else list(params)
            thresholds = dict.fromkeys(names, threshold)
        named = dict(model.named_parameters())
        masks = {}
        for name, t in thresholds.items():
            if not t >= 0:
                raise ConfigError(f"threshold for {name!r} must be >= 0, got {t}")
            masks[name] = _lookup(named, name).detach().abs() >= t
        return cls(masks)

    @classmethod
    def from_std(cls, model: nn.Module, ratio: float, params: Iterable[str] | None = None) -> MaskSet:
        """DeepHoyer's std rule: per tensor, prune ``|w| < ratio · std(w)`` with the population std
        (ddof 0) over all elements, zeros included."""
        if not ratio >= 0:
            raise ConfigError(f"std ratio must be >= 0, got {ratio}")
        named = dict(model.named_parameters())
        names = _default_params(model) if params is None else list(params)
        masks = {}
        for name in names:
            w = _lookup(named, name).detach()
            masks[name] = w.abs() >= ratio * w.std(correction=0)
        return cls(masks)

    @classmethod
    def from_zeros(cls, model: nn.Module, params: Iterable[str] | None = None) -> MaskSet:
        """Freeze the zeros the weights already have (e.g. after loading a pruned checkpoint)."""
        named = dict(model.named_parameters())
        names = _default_params(model) if params is None else list(params)
        return cls({name: _lookup(named, name).detach() != 0 for name in names})

    @classmethod
    def from_groups(
        cls, model: nn.Module, keep: Mapping[str, Tensor | Sequence[int]], dim: int = 0
    ) -> MaskSet:
        """Whole slices along `dim`: ``dim=0`` filters (conv) / rows (linear) / bias entries, ``dim=1``
        input channels / columns. `keep` gives, per parameter, a bool vector of that dimension's length
        or the indices to keep."""
        named = dict(model.named_parameters())
        masks = {}
        for name, kept in keep.items():
            shape = _lookup(named, name).shape
            if not -len(shape) <= dim < len(shape):
                raise ConfigError(f"parameter {name!r} of shape {tuple(shape)} has no dimension {dim}")
            size = shape[dim]
            vector = torch.as_tensor(kept, device=named[name].device)
            if vector.dtype != torch.bool:
                index = vector.long().reshape(-1)
                if len(index) and not bool(((index >= 0) & (index < size)).all()):
                    raise ConfigError(f"kept indices for {name!r} must be in 0..{size - 1}, got {kept!r}")
                vector = torch.zeros(size, dtype=torch.bool, device=index.device).index_fill_(0, index, True)
            if vector.shape != (size,):
                raise SurgeryError(
                    f"group mask for {name!r} has shape {tuple(vector.shape)}, expected ({size},) "
                    f"for dimension {dim} of {tuple(shape)}"
                )
            view = [1] * len(shape)
            view[dim] = size
            masks[name] = vector.reshape(view).expand(shape).clone()
        return cls(masks)


def _bind(model: nn.Module, masks: MaskSet) -> list[tuple[str, nn.Parameter, Tensor]]:
    """Check every mask against the model; return (name, parameter, mask on its device)."""
    named = dict(model.named_parameters())
    bound = []
    for name, mask in masks.items():
        param = _lookup(named, name)
        if mask.shape != param.shape:
            raise SurgeryError(
                f"mask for {name!r} has shape {tuple(mask.shape)} but the parameter has shape "
                f"{tuple(param.shape)}"
            )
        bound.append((name, param, mask.to(param.device)))
    return bound


def _zero_pruned(param: nn.Parameter, pruned: Tensor) -> None:
    if pruned.device != param.device:  # the model was moved after attaching
        pruned = pruned.to(param.device)
    with torch.no_grad():
        param.masked_fill_(pruned, 0)


class MaskHandle:
    """Masks attached to a model's parameters; see `attach`."""

    def __init__(self, bound: list[tuple[str, nn.Parameter, Tensor]]) -> None:
        # Pruned positions are stored negated once so the per-step work is a single masked_fill.
        self._entries = [(name, param, ~mask) for name, param, mask in bound]
        self._hooks: list[RemovableHandle] = [
            param.register_hook(lambda grad, pruned=pruned: grad.masked_fill(pruned.to(grad.device), 0))
            for _, param, pruned in self._entries
        ]
        self.reapply()

    @property
    def masks(self) -> MaskSet:
        return MaskSet({name: ~pruned for name, _, pruned in self._entries})

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def reapply(self) -> None:
        """Set every masked weight back to exactly zero; call after each optimizer step."""
        for _, param, pruned in self._entries:
            _zero_pruned(param, pruned)

    def after_step(self, model: nn.Module, step: int) -> None:
        """Trainer-method hook: re-zero after every optimizer step."""
        self.reapply()

    def remove(self) -> None:
        """Drop the gradient hooks (weights keep their current values). Safe to call twice."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach(model: nn.Module, masks: Mapping[str, Tensor]) -> MaskHandle:
    """Zero the masked weights now and their gradients on every backward; see `MaskHandle`."""
    masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    return MaskHandle(_bind(model, masks))


def fold(model: nn.Module, masks: Mapping[str, Tensor] | MaskHandle) -> nn.Module:
    """Write the masks into the weights for good (the export form) and return `model`. Given a
    `MaskHandle`, also removes its hooks, so the model carries no masking machinery afterwards."""
    if isinstance(masks, MaskHandle):
        owned = {id(p) for p in model.parameters()}
        foreign = [name for name, param, _ in masks._entries if id(param) not in owned]
        if foreign:
            raise SurgeryError(f"the mask handle holds parameters that are not in this model: {foreign[:3]}")
        masks.reapply()
        masks.remove()
        return model
    masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    for _, param, mask in _bind(model, masks):
        _zero_pruned(param, ~mask)
    return model
