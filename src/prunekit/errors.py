"""Exceptions a user can cause. The CLI prints their message without a traceback and exits non-zero."""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class: something the user asked for or handed us is wrong; the message says what to do."""


class ConfigError(PrunekitError, ValueError):
    """An unknown name, a bad option value, an unparsable expression or an impossible budget."""


class DataError(PrunekitError):
    """A dataset is missing, malformed or refused (e.g. an unsafe pickle)."""


class ChecksumError(DataError):
    """A downloaded or on-disk file does not match its official checksum."""


class SurgeryError(PrunekitError):
    """A physical edit could not be applied correctly; names the layer and the reason."""


class CheckpointError(PrunekitError):
    """A checkpoint file is corrupt, unsafe, or does not match its own metadata."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """The one wording for 'no such model/dataset/method/...', listing the valid names."""
    return ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
