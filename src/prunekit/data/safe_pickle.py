"""A restricted unpickler for the CIFAR python batches: numpy arrays and plain containers only."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import DataError

# numpy's own array-rebuilding functions, taken from how numpy pickles an array, because their module path
# moved between numpy 1 (numpy.core) and 2 (numpy._core) and both appear in files in the wild.
_reconstruct = np.empty(0).__reduce_ex__(2)[0]
_frombuffer = np.empty(0).__reduce_ex__(5)[0]

# Everything the official batches (Python 2 pickles) and Python 3 re-pickles of them reference.
# `_codecs.encode` is how Python 3 writes bytes at protocol <= 2; it only converts text to bytes.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle global {module}.{name}: CIFAR batches contain only numpy arrays, "
                "lists and strings, so this file is not a genuine dataset file (possibly malicious)"
            ) from None


def load_restricted(path: str | Path) -> Any:
    # latin1 is the encoding numpy documents for Python 2 pickles of arrays (the official CIFAR files).
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; the file is corrupt, delete it and download it again"
        ) from exc
