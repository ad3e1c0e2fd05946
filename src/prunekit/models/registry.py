"""A timm-style registry: every architecture is created by name with uniform arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.errors import unknown_name


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    num_classes: int  # default class count (the paper's dataset)
    in_channels: int  # default input channels
    input_size: tuple[int, int]  # default (H, W) the architecture was designed for
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: `builder(num_classes=..., in_channels=..., **kw) -> nn.Module` becomes `create(name)`."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, num_classes, in_channels, input_size, description)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("model", name, list(_REGISTRY)) from None


def create(name: str, num_classes: int | None = None, in_channels: int | None = None, **kw: Any) -> nn.Module:
    """Build architecture `name`. The model remembers how it was built in `model.prunekit_arch`
    (name + resolved arguments), which checkpoints use to rebuild the base before replaying edits."""
    entry = model_entry(name)
    args: dict[str, Any] = {
        "num_classes": entry.num_classes if num_classes is None else int(num_classes),
        "in_channels": entry.in_channels if in_channels is None else int(in_channels),
        **kw,
    }
    try:
        model = entry.builder(**args)
    except TypeError as exc:  # an option this architecture does not take
        from prunekit.errors import ConfigError

        raise ConfigError(f"model {name!r}: {exc}") from None
    model.prunekit_arch = {"name": name, "kwargs": args}
    return model


def default_input_shape(name: str, in_channels: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) of one example for architecture `name`."""
    entry = model_entry(name)
    return (entry.in_channels if in_channels is None else in_channels, *entry.input_size)
