"""The method registry: names, typed options from strings, and the errors a user sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.methods import Method, base, create_method, list_methods, method_class, register_method


def test_baselines_are_registered() -> None:
    assert {"fpgm", "l1", "random", "slimming"} <= set(list_methods())
    assert list_methods() == sorted(list_methods())


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'hrnak'; valid methods: ") as exc:
        create_method("hrnak")
    listed = str(exc.value).split("valid methods: ")[1].split(", ")
    assert {"fpgm", "l1", "random", "slimming"} <= set(listed) and listed == sorted(listed)


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError, match=r"method 'random' has no option 'sed'; valid options: rates, seed"):
        create_method("random", sed=1)


def test_string_options_are_converted() -> None:
    method = create_method("random", rates=0.5, seed="7")
    assert (method.options.seed, method.options.rates) == (7, "0.5")
    slimming = create_method("slimming", ratio="0.3", min_channels=2.0)
    assert (slimming.options.ratio, slimming.options.min_channels) == (0.3, 2)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("random", {"seed": "abc"}, "option 'seed' of method 'random' must be a whole number, got 'abc'"),
        ("random", {"seed": 1.5}, "option 'seed' of method 'random' must be a whole number, got 1.5"),
        ("slimming", {"ratio": "half"}, "option 'ratio' of method 'slimming' must be a number, got 'half'"),
        ("slimming", {"ratio": 1.5}, r"slimming ratio must be in \[0, 1\), got 1.5"),
        ("slimming", {"min_channels": 0}, "slimming min_channels must be at least 1, got 0"),
        ("l1", {"rates": "*conv1:0.5,"}, "empty item between commas"),
        ("l1", {"rates": ["0.5"]}, r"option 'rates' of method 'l1' must be a string, got \['0.5'\]"),
    ],
)
def test_invalid_option_values(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_method(name, **options)


def test_plan_needs_calibration_inputs() -> None:
    with pytest.raises(ConfigError, match="method 'l1' needs calibration inputs"):
        create_method("l1").plan(nn.Conv2d(1, 1, 1), None)


def test_sparsify_stage_only_for_methods_with_penalties() -> None:
    assert method_class("slimming").needs_sparsify()
    assert not method_class("l1").needs_sparsify()
    assert create_method("fpgm").penalty(nn.Conv2d(1, 1, 1)) is None


@dataclass
class ToyOptions:
    strength: float = 1.0
    mode: Literal["a", "b"] = "a"
    verbose: bool = False
    limit: int | None = None


def test_a_new_method_plugs_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))  # the toy leaves no trace

    @register_method
    class Toy(Method):
        name = "toy-test"
        Options = ToyOptions

        def penalty(self, model: nn.Module) -> Tensor | None:
            return torch.tensor(self.options.strength)

    method = create_method("toy-test", strength="2", mode="b", verbose="yes", limit="3")
    assert (method.options.strength, method.options.mode, method.options.verbose) == (2.0, "b", True)
    assert method.options.limit == 3 and create_method("toy-test", limit=None).options.limit is None
    assert Toy.needs_sparsify() and method.penalty(nn.Linear(1, 1)).item() == 2.0
    with pytest.raises(
        ConfigError, match=r"option 'mode' of method 'toy-test' must be one of 'a', 'b', got 'c'"
    ):
        create_method("toy-test", mode="c")
    with pytest.raises(ConfigError, match="option 'verbose' of method 'toy-test' must be true or false"):
        create_method("toy-test", verbose="maybe")
    with pytest.raises(NotImplementedError, match="method 'toy-test' does not produce a plan"):
        method.plan(nn.Linear(1, 1), None)


def test_registration_is_checked() -> None:
    class Twin(Method):
        name = "l1"
        Options = ToyOptions

    class Untyped(Method):
        name = "untyped-test"
        Options = dict

    with pytest.raises(ValueError, match="method 'l1' registered twice"):
        register_method(Twin)
    with pytest.raises(TypeError, match="Untyped.Options must be a dataclass"):
        register_method(Untyped)
