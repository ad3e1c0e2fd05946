"""The example method in docs/architecture.md runs as written and meets its budget."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunekit.measure import cost
from prunekit.methods import base
from prunekit.models import create

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_the_documented_example_method_plugs_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))  # the example leaves no trace
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    example = next(b for b in blocks if "register_method" in b)
    assert len(example.strip().splitlines()) <= 40
    scope: dict[str, object] = {}
    exec(compile(example, str(DOC), "exec"), scope)
    reached = cost(scope["small"], (3, 32, 32)).macs / cost(create("resnet20"), (3, 32, 32)).macs
    assert abs(reached - 0.5) <= 0.01 * 0.5
    assert "weight-power-example" in base.list_methods()
