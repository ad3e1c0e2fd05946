"""Verified downloads: stream to `NAME.part`, check length and checksum, then rename into place."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from prunekit.errors import ChecksumError, DataError

MIRROR_ENV = "PRUNEKIT_MIRROR"
_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(
    path: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    what: str | None = None,
    remedy: str = "delete it and download it again",
) -> None:
    """Raise ChecksumError naming `what` (default: the path), expected and actual checksum, and `remedy`."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise ChecksumError(
                f"{what or path} is corrupt: {algorithm} expected {expected.lower()}, got {actual}; {remedy}"
            )


def mirror_url(official_url: str, relative_path: str, mirror: str | None = None) -> str:
    """The URL to fetch: `{mirror}/{relative_path}` when a mirror is set (argument, else $PRUNEKIT_MIRROR).

    A mirror has the same layout as a data root, so any data root served over HTTP is a mirror.
    """
    base = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if not base:
        return official_url
    return f"{base.rstrip('/')}/{relative_path.lstrip('/')}"


def download_verified(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest`; on any failure nothing is left at `dest` or `dest.part`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, timeout)
        verify_file(
            part,
            md5,
            sha256,
            what=f"download of {url}",
            remedy=f"the partial file was deleted; try again or use another mirror (${MIRROR_ENV})",
        )
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _fetch(url: str, part: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "prunekit"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            announced = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"download of {url} failed: {exc}; check the network or set ${MIRROR_ENV} to a mirror, "
            "or place the file in the data root by hand"
        ) from exc
    if announced is not None and received != int(announced):
        raise ChecksumError(
            f"download of {url} is truncated: received {received} of {int(announced)} bytes; try again"
        )
