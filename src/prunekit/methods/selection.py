"""The layer-selection language every method shares: which layers lose how many output channels.

Three forms, comma separated items (specs/tpp.md §3, specs/hrank.md §2.1):

- glob rules ``"*layer*.conv1:0.9,features.*:0.5"``: fnmatch on module names, the last matching rule wins;
- HRank list expressions ``"[0.1]+[0.60]*35+[0.0]*2"``: one entry per prunable layer, in execution order;
- a single float ``"0.5"``: the same ratio everywhere.

Any of them may carry one budget item, ``target_macs=0.5`` (fraction of the dense MACs to keep) or
``speedup=2`` (= ``target_macs=0.5``), or ``target_density=0.1`` (fraction of weights kept nonzero, for
element-wise methods); alone, a budget searches one uniform ratio, otherwise it scales the given ratios
until the pruned model's MACs meet it. The searches live in `methods.budget`.

A ratio is the fraction of a layer's output channels to remove; a layer keeps ``n - int(ratio * n)``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prunekit.errors import ConfigError

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"\d+")
_BUDGET_KEYS = ("target_macs", "speedup", "target_density")


def _syntax_error(spec: str, pos: int, what: str) -> ConfigError:
    return ConfigError(f"bad layer selection: {what}\n  {spec}\n  {' ' * pos}^")


@dataclass(frozen=True)
class Budget:
    """A MAC budget: keep `fraction` of the dense MACs. `kind`/`value` remember how the user wrote it."""

    kind: Literal["target_macs", "speedup", "target_density"]
    value: float

    @property
    def fraction(self) -> float:
        """Fraction of the dense cost to keep: MACs, or nonzero weights for ``target_density``."""
        return 1.0 / self.value if self.kind == "speedup" else self.value

    @property
    def counts(self) -> str:
        return "density" if self.kind == "target_density" else "macs"


@dataclass(frozen=True)
class Selection:
    """A parsed selection. Exactly one of `rules`, `sequence`, `uniform` is set, unless only a budget is."""

    spec: str
    rules: tuple[tuple[str, float], ...] = ()
    sequence: tuple[float, ...] | None = None
    uniform: float | None = None
    budget: Budget | None = None

    def ratios(self, layers: Sequence[str]) -> dict[str, float]:
        """Ratio per layer (0.0 where nothing selects it), in the order of `layers`. A budget-only
        selection gives 1.0 everywhere: the shape a budget search scales."""
        if self.sequence is not None:
            if len(self.sequence) != len(layers):
                raise ConfigError(
                    f"the list expression {self.spec!r} has {len(self.sequence)} entries but the model has "
                    f"{len(layers)} prunable layers; it needs exactly {len(layers)} "
                    f"(the first entry maps to {layers[0]!r}, the last to {layers[-1]!r})"
                    if layers
                    else f"the list expression {self.spec!r} has {len(self.sequence)} entries but the model "
                    "has no prunable layers"
                )
            return dict(zip(layers, self.sequence, strict=True))
        if self.rules:
            ratios = dict.fromkeys(layers, 0.0)
            for pattern, ratio in self.rules:
                matched = fnmatch.filter(layers, pattern)
                if not matched:
                    shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
                    raise ConfigError(
                        f"layer pattern {pattern!r} in {self.spec!r} matches no prunable layer; "
                        f"prunable layers are named like: {shown}"
                    )
                ratios.update(dict.fromkeys(matched, ratio))
            return ratios
        uniform = 1.0 if self.uniform is None else self.uniform
        return dict.fromkeys(layers, uniform)

    @classmethod
    def of(
        cls,
        *,
        ratio: float | None = None,
        ratios: str | None = None,
        target_macs: float | None = None,
        speedup: float | None = None,
        target_density: float | None = None,
    ) -> Selection | None:
        """The selection given by at most one of the API's keywords (None when none is given); typed values
        are checked as the expression parser checks them, with no round trip through text."""
        given = {
            k: v
            for k, v in dict(
                ratio=ratio,
                ratios=ratios,
                target_macs=target_macs,
                speedup=speedup,
                target_density=target_density,
            ).items()
            if v is not None
        }
        if len(given) > 1:
            raise ConfigError(
                f"give one of ratio / ratios / target_macs / speedup / target_density, not {', '.join(given)}"
            )
        if not given:
            return None
        ((key, value),) = given.items()
        if key == "ratios":
            return parse_selection(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if key == "ratio":
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"ratio {value:g} is outside [0, 1): it is the fraction of channels removed"
                )
            return cls(f"{value:g}", uniform=value)
        return cls(f"{key}={value:g}", budget=_checked_budget(key, value))

    def selected(self, layers: Sequence[str]) -> set[str]:
        """The layers some part of the expression names (glob rules may leave layers unnamed)."""
        if self.rules:
            return {name for pattern, _ in self.rules for name in fnmatch.filter(layers, pattern)}
        return set(layers)


def parse_selection(spec: str | float) -> Selection:
    """Parse a selection expression; syntax errors show the expression with a caret at the fault."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = repr(float(spec))
    if not isinstance(spec, str):
        raise ConfigError(f"a layer selection must be a string or a number, got {type(spec).__name__}")
    if not spec.strip():
        raise ConfigError("empty layer selection; give e.g. '0.5', '*conv1:0.5' or 'target_macs=0.5'")
    rules: list[tuple[str, float]] = []
    ratio_lists: list[tuple[int, str, list[float]]] = []
    budget: Budget | None = None
    start = 0
    for item in spec.split(","):
        end = start + len(item)
        lead = len(item) - len(item.lstrip())
        text = item.strip()
        at = start + lead
        if not text:
            raise _syntax_error(spec, at, "empty item between commas")
        if ":" in text:
            pattern, _, ratio_text = text.rpartition(":")
            if not pattern.strip():
                raise _syntax_error(spec, at, "missing layer pattern before ':'")
            ratio_at = at + len(pattern) + 1
            rules.append((pattern.strip(), _parse_ratio(spec, ratio_at, end)))
        elif "=" in text:
            if budget is not None:
                raise _syntax_error(
                    spec, at, "more than one budget; give one of target_macs=, speedup=, target_density="
                )
            budget = _parse_budget(spec, at, end)
        else:
            ratio_lists.append((at, text, _parse_list(spec, at, end)))
        start = end + 1
    if ratio_lists and (rules or len(ratio_lists) > 1):
        at = ratio_lists[-1][0] if len(ratio_lists) > 1 else ratio_lists[0][0]
        raise _syntax_error(
            spec, at, "a ratio list or single ratio cannot be combined with other ratios; use 'pattern:ratio'"
        )
    if not ratio_lists:
        return Selection(spec, rules=tuple(rules), budget=budget)
    _, text, values = ratio_lists[0]
    if len(values) == 1 and not any(c in text for c in "[+*"):
        return Selection(spec, uniform=values[0], budget=budget)
    return Selection(spec, sequence=tuple(values), budget=budget)


def resolve_ratios(spec: str | float | Selection, layers: Sequence[str]) -> dict[str, float]:
    """Ratio per prunable layer (names in execution order). A budget is ignored here: the ratios
    returned are the shape that :func:`solve_budget` scales."""
    selection = spec if isinstance(spec, Selection) else parse_selection(spec)
    return selection.ratios(layers)


def _skip_space(spec: str, pos: int, end: int) -> int:
    while pos < end and spec[pos].isspace():
        pos += 1
    return pos


def _number_at(spec: str, pos: int, end: int, what: str) -> tuple[float, int]:
    match = _NUMBER.match(spec, pos, end)
    if match is None:
        raise _syntax_error(spec, pos, f"expected {what}")
    return float(match.group()), match.end()


def _check_ratio(spec: str, pos: int, ratio: float) -> float:
    if not 0.0 <= ratio < 1.0:
        raise _syntax_error(
            spec, pos, f"ratio {ratio:g} is outside [0, 1): it is the fraction of channels removed"
        )
    return ratio


def _parse_ratio(spec: str, pos: int, end: int) -> float:
    pos = _skip_space(spec, pos, end)
    ratio, after = _number_at(spec, pos, end, "a ratio in [0, 1) after ':'")
    if _skip_space(spec, after, end) != end:
        raise _syntax_error(spec, _skip_space(spec, after, end), "unexpected text after the ratio")
    return _check_ratio(spec, pos, ratio)


def _parse_budget(spec: str, pos: int, end: int) -> Budget:
    key_text, _, _ = spec[pos:end].partition("=")
    key = key_text.strip()
    if key not in _BUDGET_KEYS:
        raise _syntax_error(spec, pos, f"unknown budget {key!r}; valid budgets: {', '.join(_BUDGET_KEYS)}")
    value_at = _skip_space(spec, pos + len(key_text) + 1, end)
    value, after = _number_at(spec, value_at, end, f"a number after '{key}='")
    if _skip_space(spec, after, end) != end:
        raise _syntax_error(spec, _skip_space(spec, after, end), "unexpected text after the budget")
    try:
        return _checked_budget(key, value)
    except ConfigError as exc:
        raise _syntax_error(spec, value_at, str(exc)) from None


def _checked_budget(key: str, value: float) -> Budget:
    if key == "target_macs" and not 0.0 < value < 1.0:
        raise ConfigError(f"target_macs={value:g} must be in (0, 1): the fraction of dense MACs to keep")
    if key == "target_density" and not 0.0 < value < 1.0:
        raise ConfigError(f"target_density={value:g} must be in (0, 1): the fraction of weights kept nonzero")
    if key == "speedup" and value <= 1.0:
        raise ConfigError(f"speedup={value:g} must be > 1")
    return Budget(key, value)  # type: ignore[arg-type]


def _parse_list(spec: str, pos: int, end: int) -> list[float]:
    """``term ('+' term)*`` with ``term := ('[' number ']' | number) ('*' count)?``."""
    values: list[float] = []
    while True:
        pos = _skip_space(spec, pos, end)
        bracket = pos < end and spec[pos] == "["
        if bracket:
            pos = _skip_space(spec, pos + 1, end)
        number_at = pos
        ratio, pos = _number_at(spec, pos, end, "a ratio (a number such as 0.5)")
        _check_ratio(spec, number_at, ratio)
        pos = _skip_space(spec, pos, end)
        if bracket:
            if pos >= end or spec[pos] != "]":
                raise _syntax_error(spec, pos, "expected ']'")
            pos = _skip_space(spec, pos + 1, end)
        count = 1
        if pos < end and spec[pos] == "*":
            pos = _skip_space(spec, pos + 1, end)
            match = _INTEGER.match(spec, pos, end)
            if match is None:
                raise _syntax_error(spec, pos, "expected a whole repeat count after '*'")
            count, pos = int(match.group()), _skip_space(spec, match.end(), end)
        values.extend([ratio] * count)
        if pos >= end:
            return values
        if spec[pos] != "+":
            raise _syntax_error(spec, pos, "expected '+', ',' or the end of the expression")
        pos += 1


def pruned_count(ratio: float, n: int, layer: str) -> int:
    """``int(ratio * n)``: the floor of the float product, as HRank does (0.7 * 12 -> 8)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"layer {layer!r}: pruning ratio {ratio:g} is outside [0, 1)")
    count = int(ratio * n)
    if count >= n:
        raise ConfigError(f"layer {layer!r}: ratio {ratio:g} would remove all {n} channels; lower it")
    return count
