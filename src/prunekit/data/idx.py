"""The IDX format of MNIST and Fashion-MNIST (big-endian header, then raw uint8), gzip-compressed."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import DataError

_UBYTE = 0x08


def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read a (gzipped or raw) unsigned-byte IDX file with `ndim` dimensions into a uint8 tensor."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; delete it and download it again") from exc
    return parse_idx(raw, ndim, source=str(path))


def parse_idx(raw: bytes, ndim: int, source: str = "IDX data") -> torch.Tensor:
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: {len(raw)} bytes is too short for an IDX header; the file is corrupt")
    zero, dtype, got_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _UBYTE or got_ndim != ndim:
        magic = struct.unpack(">I", raw[:4])[0]
        raise DataError(
            f"{source}: bad IDX magic number {magic:#010x}, expected {(_UBYTE << 8) | ndim:#010x} "
            f"(unsigned bytes, {ndim} dims); this is not the expected MNIST-style file"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{source}: header says shape {dims} = {expected} bytes but the file holds {len(raw) - header}; "
            "the file is truncated or corrupt"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    """Write uint8 data as gzipped IDX, byte-reproducibly (no file name, zero timestamp), atomically."""
    data = np.ascontiguousarray(array.numpy() if isinstance(array, torch.Tensor) else array)
    if data.dtype != np.uint8:
        raise DataError(f"IDX writer supports uint8 only, got {data.dtype}")
    path = Path(path)
    header = struct.pack(">HBB", 0, _UBYTE, data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(header + data.tobytes())
    part = path.with_name(path.name + ".part")
    part.write_bytes(buffer.getvalue())
    os.replace(part, path)
