"""Method options from strings, YAML and Python: typed conversion of option values to their declared types.

Every method's `Options` is a dataclass; CLI and recipe values arrive as strings or YAML scalars and are
converted here against the field's annotation, so a wrong value is refused with the option named.
"""

from __future__ import annotations

import types
import typing
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
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        # A list in YAML or Python, or a comma-separated string on the command line.
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_hint = typing.get_args(hint)[0]
        return tuple(coerce(v.strip() if isinstance(v, str) else v, item_hint, where) for v in items)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return repr(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value
