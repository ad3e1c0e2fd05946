"""Options dataclasses documented (`describe_options`), list values coerced, and train/ imports one way."""

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import prunekit.train.config
import prunekit.train.schedules
from prunekit.errors import ConfigError
from prunekit.methods import list_methods, method_class
from prunekit.methods.options import OptionDoc, coerce, describe_options, type_name


@dataclass
class Example:
    ratio: float = field(default=0.5, metadata={"help": "fraction removed,\n   per layer"})
    limit: int | None = None
    tie_break: Literal["stable", "numpy"] = "stable"
    stages: tuple[int, ...] = (1, 3)
    milestones: list[int] = field(default_factory=list)
    derived: str = field(default="x", init=False)


def test_describe_options_by_hand() -> None:
    docs = describe_options(Example)
    assert docs[0] == OptionDoc("ratio", "float", 0.5, "fraction removed, per layer", float)
    assert [(d.name, d.type, d.default, d.help) for d in docs[1:]] == [
        ("limit", "int | None", None, ""),
        ("tie_break", "'stable' | 'numpy'", "stable", ""),
        ("stages", "tuple[int, ...]", (1, 3), ""),
        ("milestones", "list[int]", [], ""),
    ]  # `derived` is not settable (init=False)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_is_documented_with_its_real_defaults(name) -> None:
    options = method_class(name).Options
    docs = describe_options(options)
    defaults = options()
    assert [d.name for d in docs] == [f.name for f in dataclasses.fields(options) if f.init]
    for doc in docs:
        assert doc.type and "typing." not in doc.type and "<class" not in doc.type
        assert doc.default == getattr(defaults, doc.name) and "\n" not in doc.help


def test_type_name_reads_as_written() -> None:
    assert type_name(bool | None) == "bool | None"
    assert type_name(dict[str, float]) == "dict[str, float]"
    assert type_name(Literal["a"] | None) == "'a' | None"


def test_coerce_reads_lists_from_the_command_line_and_yaml() -> None:
    assert coerce("50,100", list[int], "milestones") == [50, 100]
    assert coerce("3, 1,", tuple[int, ...], "stages") == (3, 1)
    assert coerce([2.0, "4"], list[int], "milestones") == [2, 4]
    with pytest.raises(ConfigError, match="milestones must be a whole number, got 'x'"):
        coerce("5,x", list[int], "milestones")


def imported_modules(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_train_config_and_schedules_import_one_way() -> None:
    assert "prunekit.train.config" in imported_modules(prunekit.train.schedules)
    assert not {m for m in imported_modules(prunekit.train.config) if m.startswith("prunekit.train")}
