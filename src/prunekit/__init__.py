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

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "PrunekitError",
    "SurgeryError",
    "__version__",
]
