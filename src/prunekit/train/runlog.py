"""`log.jsonl` in a run folder: one JSON object per line; epoch records carry `"kind": "epoch"`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG = "log.jsonl"


def append_record(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    with open(Path(run_dir) / LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def reconcile_epochs(run_dir: str | os.PathLike[str], history: list[dict[str, Any]]) -> None:
    """Make the log's epoch lines match a resumed checkpoint's history: drop lines of epochs the checkpoint
    does not cover, add checkpointed epochs whose line was lost (the process died between the two writes).
    Other lines stay as they are; a torn line is dropped."""
    path = Path(run_dir) / LOG
    done = {row["epoch"]: row for row in history}
    kept: list[str] = []
    logged: set[int] = set()
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn final line from the crash
        if isinstance(row, dict) and row.get("kind") == "epoch":
            if row.get("epoch") not in done or row["epoch"] in logged:
                continue
            logged.add(row["epoch"])
        kept.append(line)
    kept += [json.dumps(row) for epoch, row in done.items() if epoch not in logged]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
