"""A run folder: config.yaml, log.jsonl, summary.json, model.safetensors, report.md and plots.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half-written
summary or model that a later `report`/`load` would trust. A folder is made only when a run writes to it
(reading a missing folder never creates one). `open_run` checks a run's `--out` before any work: a folder
that already holds a run is refused unless the run continues it (`resume`) or replaces it (`overwrite`), and
an `--out` that cannot be written is refused. `RunFolder.recording` brackets the run itself: the folder is
cleared (overwrite) and the config written when it starts; `summary.json` says `"status": "running"` until
`finish` writes the complete summary; a run that fails leaves `"status": "incomplete"` and the error, or
nothing at all when it failed before writing anything but its config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError

#: Files whose presence means a folder holds a prunekit run (of any command).
RUN_MARKERS = ("config.yaml", "summary.json", "log.jsonl", "model.safetensors", "last.safetensors")
#: What a folder that failed before its first real output holds: it is removed rather than marked.
_BOOKKEEPING = {"config.yaml", "summary.json"}


def _holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def open_run(path: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> RunFolder:
    """The run folder `path` for a new run (or the one `resume` continues), checked before any work.

    Refused: a folder that holds a run (unless `overwrite` or `resume`), a folder that holds other files
    (never cleared: `--overwrite` only replaces a prunekit run), `resume` of a folder without a run, and a
    path that cannot be written. Nothing is created or removed here (`recording` does that)."""
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume contradict each other; pass one")
    folder = RunFolder(path)
    where = folder.path
    if where.exists() and not where.is_dir():
        raise ConfigError(f"--out {where} exists and is not a directory; choose another --out")
    if resume:
        if not _holds_run(where) or not folder.file("config.yaml").is_file():
            raise ConfigError(f"{where} holds no run to resume (no config.yaml); drop --resume")
    elif _holds_run(where):
        if not overwrite:
            raise ConfigError(
                f"{where} already holds a run; choose another --out, pass --resume to continue it, "
                "or --overwrite to replace it"
            )
    elif where.is_dir() and any(where.iterdir()):
        raise ConfigError(f"{where} is not empty and holds no prunekit run; choose another --out")
    _check_writable(where)
    folder.clear_on_start = overwrite
    return folder


def _check_writable(path: Path) -> None:
    """Probe the deepest existing ancestor with a throwaway folder: permissions alone do not tell (root,
    read-only mounts, /proc)."""
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write --out {path}: {ancestor} is not a directory; choose another --out")
    try:
        probe = tempfile.mkdtemp(prefix=".prunekit-probe-", dir=ancestor)
        os.rmdir(probe)
    except OSError as exc:
        raise ConfigError(
            f"cannot write --out {path} ({exc.strerror or exc} in {ancestor}); choose a writable --out"
        ) from None


class RunFolder:
    def __init__(self, path: str | os.PathLike[str], *, exist_ok: bool = True) -> None:
        # Whether a run may reuse a folder is decided by `open_run`, before any work; `exist_ok=False` is
        # the plain form of that check for callers that write a folder of their own.
        self.path = Path(path)
        self.clear_on_start = False
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} exists and is not a directory")
        if self.path.is_dir() and not exist_ok and any(self.path.iterdir()):
            raise ConfigError(
                f"run folder {self.path} is not empty; choose another --out or pass --overwrite"
            )

    def file(self, name: str) -> Path:
        """Where `name` goes; the folder is made here, on the first write."""
        self._make()
        return self.path / name

    def _make(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None

    @contextmanager
    def atomic(self, name: str, mode: str = "w") -> Iterator[Any]:
        target = self.file(name)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.replace(tmp, target)

    @contextmanager
    def recording(self, config: dict[str, Any] | None, *, resume: bool = False) -> Iterator[RunFolder]:
        """Bracket a run: clear the folder if `open_run` was told to overwrite, write `config` (a resumed
        run keeps the config it started with) and mark the summary running; on an exception mark the run
        incomplete with the error, or remove the folder when nothing but the config was written."""
        existed = self.path.is_dir()
        if self.clear_on_start and existed:
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if config is not None and not resume:
            self.write_config(config)
        self.write_summary({"status": "running"})
        try:
            yield self
        except BaseException as exc:
            self._failed(exc, created=not existed or self.clear_on_start)
            raise

    def _failed(self, exc: BaseException, *, created: bool) -> None:
        names = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        if names <= _BOOKKEEPING and created:
            # Failed before it produced anything: leave nothing behind (a folder with only config.yaml).
            shutil.rmtree(self.path, ignore_errors=True)
            return
        error = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        self.write_summary({"status": "incomplete", "error": error})

    def write_config(self, config: dict[str, Any]) -> Path:
        with self.atomic("config.yaml") as fh:
            yaml.safe_dump(_plain(config), fh, sort_keys=False)
        return self.file("config.yaml")

    def read_config(self) -> dict[str, Any]:
        path = self.path / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{self.path} has no config.yaml (is it a prunekit run folder?)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a run configuration")
        return data

    def write_summary(self, summary: dict[str, Any]) -> Path:
        with self.atomic("summary.json") as fh:
            json.dump(_plain(summary), fh, indent=2)
            fh.write("\n")
        return self.file("summary.json")

    def write_text(self, name: str, text: str) -> Path:
        with self.atomic(name) as fh:
            fh.write(text)
        return self.file(name)

    def read_log(self) -> list[dict[str, Any]]:
        """The epoch records of log.jsonl (lines that fail to parse — a crash mid-write — are skipped)."""
        log = self.path / "log.jsonl"
        if not log.is_file():
            return []
        rows = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind", "epoch") == "epoch":
                rows.append(row)
        return rows

    def read_summary(self) -> dict[str, Any]:
        """The summary of a finished run; a missing folder, a running or an incomplete run is an error."""
        if not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} does not exist (no summary.json to read)")
        path = self.path / "summary.json"
        if not path.is_file():
            raise ConfigError(f"{self.path} has no summary.json (is it a prunekit run folder?)")
        summary = json.loads(path.read_text(encoding="utf-8"))
        status = summary.get("status", "complete")  # summaries written before the status field
        if status != "complete":
            why = f": {summary['error']}" if summary.get("error") else ""
            raise ConfigError(
                f"the run in {self.path} did not finish (status {status}{why}); rerun it with --overwrite "
                "or continue it with --resume"
            )
        return summary


def _plain(value: Any) -> Any:
    """YAML/JSON-safe copy: tuples → lists, paths → str, tensors/numpy scalars → numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
