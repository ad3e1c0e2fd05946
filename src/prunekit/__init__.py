"""prunekit: make trained convolutional networks physically smaller and faster, and prove it."""

from prunekit.errors import (
    CheckpointError,
    ChecksumError,
    ConfigError,
    DataError,
    PrunekitError,
    SurgeryError,
)

__version__ = "0.1.0"

# The one-call API, imported on first use so `import prunekit` (and the CLI's error path) stays light.
_LAZY = {"prune": "prunekit.pipeline", "load": "prunekit.model_file", "save": "prunekit.model_file"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "PrunekitError",
    "SurgeryError",
    "__version__",
    "load",
    "prune",
    "save",
]
