"""A run folder: config.yaml, log.jsonl, summary.json, model.safetensors, report.md and plots.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half-written
summary or model that a later `report`/`load` would trust.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError


class RunFolder:
    def __init__(self, path: str | os.PathLike[str], *, exist_ok: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} exists and is not a directory")
        if self.path.is_dir() and not exist_ok and any(self.path.iterdir()):
            raise ConfigError(f"run folder {self.path} is not empty; choose another --out or pass --resume")
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def atomic(self, name: str, mode: str = "w") -> Iterator[Any]:
        target = self.file(name)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.replace(tmp, target)

    def write_config(self, config: dict[str, Any]) -> Path:
        with self.atomic("config.yaml") as fh:
            yaml.safe_dump(_plain(config), fh, sort_keys=False)
        return self.file("config.yaml")

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
        log = self.file("log.jsonl")
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
        path = self.file("summary.json")
        if not path.is_file():
            raise ConfigError(f"{self.path} has no summary.json (is it a prunekit run folder?)")
        return json.loads(path.read_text(encoding="utf-8"))


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
