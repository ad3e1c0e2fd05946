"""Method options from strings, YAML and Python: typed conversion of option values to their declared types.

Every method's `Options` is a dataclass; CLI and recipe values arrive as strings or YAML scalars and are
converted here against the field's annotation, so a wrong value is refused with the option named.
`describe_options` documents such a dataclass (name, type, default, help) for `--help` and listings; a
field's help is its ``field(metadata={"help": ...})``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from prunekit.errors import ConfigError

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert `value` to the annotated type `hint`, or raise ConfigError naming `where`."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        errors = []
        for member in (m for m in members if m is not type(None)):
            try:
                return coerce(value, member, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is list or (origin is tuple and typing.get_args(hint)[1:] == (Ellipsis,)):
        # A list in YAML or Python, or a comma-separated string on the command line.
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_hint = typing.get_args(hint)[0]
        return origin(coerce(v.strip() if isinstance(v, str) else v, item_hint, where) for v in items)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return repr(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


@dataclass(frozen=True)
class OptionDoc:
    """One field of an options dataclass as help texts show it: `type` is readable (``int | None``)."""

    name: str
    type: str
    default: Any  # `dataclasses.MISSING` when the field has no default
    help: str
    annotation: Any  # the resolved type hint, as `coerce` takes it


def describe_options(options_cls: type) -> list[OptionDoc]:
    """The settable fields of dataclass `options_cls`, in declaration order; help is one line ("" if none)."""
    hints = typing.get_type_hints(options_cls)
    docs = []
    for f in dataclasses.fields(options_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        text = " ".join(str(f.metadata.get("help", "")).split())
        docs.append(OptionDoc(f.name, type_name(hints[f.name]), default, text, hints[f.name]))
    return docs


def type_name(hint: Any) -> str:
    """``float``, ``int | None``, ``'stable' | 'numpy'``, ``tuple[int, ...]``: a hint as one writes it."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(m) for m in typing.get_args(hint))
    if origin is typing.Literal:
        return " | ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(hint))
        return f"{type_name(origin)}[{args}]" if args else type_name(origin)
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).removeprefix("typing.")
