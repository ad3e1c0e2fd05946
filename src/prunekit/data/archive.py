"""Safe extraction of the official dataset tarballs."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from prunekit.errors import DataError


def safe_extract(archive: str | Path, dest_dir: str | Path, top_folder: str) -> Path:
    """Extract `top_folder/` of a tar archive into `dest_dir`, refusing unsafe members.

    Only regular files and directories under `top_folder` are admitted: absolute paths, `..`, links and
    device files raise DataError before anything is written. The folder appears atomically (extracted
    into a temporary sibling, then renamed).
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive, top_folder)
            staging = Path(tempfile.mkdtemp(prefix=f".{top_folder}.", dir=dest_dir))
            try:
                for member in members:
                    target = staging.joinpath(*PurePosixPath(member.name).parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # regular files always have a payload
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                extracted = staging / top_folder
                if not extracted.is_dir():
                    raise DataError(
                        f"{archive} does not contain the folder {top_folder}/; it is not the official archive"
                    )
                os.replace(extracted, dest_dir / top_folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}; delete it and download it again") from exc
    return dest_dir / top_folder


def _check_member(member: tarfile.TarInfo, archive: Path, top_folder: str) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith("\\") or ":" in path.parts[0]:
        raise DataError(f"refusing to extract {archive}: member {member.name!r} escapes the target folder")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"refusing to extract {archive}: member {member.name!r} is a link or special file")
    if path.parts[0] != top_folder:
        raise DataError(f"refusing to extract {archive}: member {member.name!r} is outside {top_folder}/")
