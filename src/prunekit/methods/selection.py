"""The layer-selection language every method shares: which layers lose how many output channels.

Three forms, comma separated items (specs/tpp.md §3, specs/hrank.md §2.1):

- glob rules ``"*layer*.conv1:0.9,features.*:0.5"``: fnmatch on module names, the last matching rule wins;
- HRank list expressions ``"[0.1]+[0.60]*35+[0.0]*2"``: one entry per prunable layer, in execution order;
- a single float ``"0.5"``: the same ratio everywhere.

Any of them may carry one budget item, ``target_macs=0.5`` (fraction of the dense MACs to keep) or
``speedup=2`` (= ``target_macs=0.5``), or ``target_density=0.1`` (fraction of weights kept nonzero, for
element-wise methods), or a measured-latency budget ``target_latency=0.5`` (fraction of the dense model's
deployed latency) / ``speedup_latency=2``; alone, a budget searches one uniform ratio, otherwise it scales the
given ratios until the pruned model's MACs (or predicted latency) meet it. The searches live in
`methods.budget` and `methods.latency_budget`.

``round_to=8`` may be added to any of them: every pruned layer then keeps a multiple of 8 channels (at least
8, and fewer than its full width), so MAC cuts become latency cuts (`align_ratios`).

A ratio is the fraction of a layer's output channels to remove; a layer keeps ``n - int(ratio * n)``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prunekit.errors import ConfigError

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"\d+")
_BUDGET_KEYS = ("target_macs", "speedup", "target_density", "target_latency", "speedup_latency")
BudgetKind = Literal["target_macs", "speedup", "target_density", "target_latency", "speedup_latency"]


def _syntax_error(spec: str, pos: int, what: str) -> ConfigError:
    return ConfigError(f"bad layer selection: {what}\n  {spec}\n  {' ' * pos}^")


@dataclass(frozen=True)
class Budget:
    """A budget: keep `fraction` of the dense cost. `kind`/`value` remember how the user wrote it."""

    kind: BudgetKind
    value: float
    #: Latency budgets only: the batch size and CPU threads the latency is predicted and measured at.
    batch_size: int = 1
    threads: int = 1

    @property
    def fraction(self) -> float:
        """Fraction of the dense cost to keep: MACs, nonzero weights (``target_density``) or deployed
        latency (``target_latency`` / ``speedup_latency``)."""
        return 1.0 / self.value if self.kind in ("speedup", "speedup_latency") else self.value

    @property
    def counts(self) -> str:
        if self.kind == "target_density":
            return "density"
        return "latency" if self.kind in ("target_latency", "speedup_latency") else "macs"


@dataclass(frozen=True)
class Selection:
    """A parsed selection. Exactly one of `rules`, `sequence`, `uniform` is set, unless only a budget is."""

    spec: str
    rules: tuple[tuple[str, float], ...] = ()
    sequence: tuple[float, ...] | None = None
    uniform: float | None = None
    budget: Budget | None = None
    #: Kept widths of pruned layers are multiples of this (None: any width).
    round_to: int | None = None
    #: `round_to` was measured (``--round-to auto``): it may be halved to fit a model's narrowest layers.
    round_to_auto: bool = False
    #: ``round_to=auto+depth``: a MAC budget may remove whole residual blocks where that runs faster.
    depth: bool = False

    @property
    def only_round_to(self) -> bool:
        """Nothing but ``round_to=``: the method's own default selection, aligned."""
        return (
            self.round_to is not None
            and not self.rules
            and self.sequence is None
            and self.uniform is None
            and self.budget is None
        )

    def with_round_to(self, round_to: int | None, auto: bool = False) -> Selection:
        """This selection with `round_to` set (the spec text says so, so it parses back the same)."""
        if round_to is None or (round_to == self.round_to and auto == self.round_to_auto):
            return self
        base = ",".join(i for i in self.spec.split(",") if not i.strip().startswith("round_to"))
        spec = f"{base},round_to={round_to}" if base.strip() else f"round_to={round_to}"
        return dataclasses.replace(self, spec=spec, round_to=_checked_round_to(round_to), round_to_auto=auto)

    def round_to_for(self, widths: Iterable[int]) -> int | None:
        """`round_to` for a model whose selected layers have `widths`: a measured (auto) multiple is halved
        until every such layer can keep half its width or less, so that it never forbids the pruning it was
        measured to speed up; a multiple the user gave is kept as given (and checked by the allocation)."""
        r = self.round_to
        if r is None or not self.round_to_auto:
            return r
        narrowest = min(widths, default=2 * r)
        while r > 1 and 2 * r > narrowest:
            r //= 2
        return r

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
        target_latency: float | None = None,
        speedup_latency: float | None = None,
        round_to: int | None = None,
    ) -> Selection | None:
        """The selection given by at most one of the API's keywords (None when none is given); typed values
        are checked as the expression parser checks them, with no round trip through text. `round_to`
        combines with any of them (alone: the method's default selection, aligned)."""
        given = {
            k: v
            for k, v in dict(
                ratio=ratio,
                ratios=ratios,
                target_macs=target_macs,
                speedup=speedup,
                target_density=target_density,
                target_latency=target_latency,
                speedup_latency=speedup_latency,
            ).items()
            if v is not None
        }
        if len(given) > 1:
            raise ConfigError(
                "give one of ratio / ratios / target_macs / speedup / target_density / target_latency / "
                f"speedup_latency, not {', '.join(given)}"
            )
        if not given:
            return None if round_to is None else cls("", round_to=None).with_round_to(round_to)
        ((key, value),) = given.items()
        if key == "ratios":
            return parse_selection(value).with_round_to(round_to)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if key == "ratio":
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"ratio {value:g} is outside [0, 1): it is the fraction of channels removed"
                )
            return cls(f"{value:g}", uniform=value).with_round_to(round_to)
        return cls(f"{key}={value:g}", budget=_checked_budget(key, value)).with_round_to(round_to)

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
    round_to: int | None = None
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
        elif "=" in text and text.partition("=")[0].strip() == "round_to":
            if round_to is not None:
                raise _syntax_error(spec, at, "round_to= given twice")
            round_to = _parse_round_to(spec, at, end)
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
        return Selection(spec, rules=tuple(rules), budget=budget, round_to=round_to)
    _, text, values = ratio_lists[0]
    if len(values) == 1 and not any(c in text for c in "[+*"):
        return Selection(spec, uniform=values[0], budget=budget, round_to=round_to)
    return Selection(spec, sequence=tuple(values), budget=budget, round_to=round_to)


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


def _parse_round_to(spec: str, pos: int, end: int) -> int:
    key_text, _, _ = spec[pos:end].partition("=")
    value_at = _skip_space(spec, pos + len(key_text) + 1, end)
    match = _INTEGER.match(spec, value_at, end)
    if match is None or _skip_space(spec, match.end(), end) != end:
        raise _syntax_error(spec, value_at, "round_to= takes a whole number of channels ≥ 1, e.g. round_to=8")
    try:
        return _checked_round_to(int(match.group()))
    except ConfigError as exc:
        raise _syntax_error(spec, value_at, str(exc)) from None


def _checked_round_to(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"round_to={value!r} must be a whole number of channels ≥ 1 (kept widths become multiples of it)"
        )
    return value


def _checked_budget(key: str, value: float) -> Budget:
    if key == "target_latency" and not 0.0 < value < 1.0:
        raise ConfigError(
            f"target_latency={value:g} must be in (0, 1): the fraction of the dense deployed latency to keep"
        )
    if key == "speedup_latency" and value <= 1.0:
        raise ConfigError(f"speedup_latency={value:g} must be > 1")
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


#: The ratio that removes a whole group: only the ``round_to=auto+depth`` search sets it, for a residual
#: branch it proved can go (`latency_budget.emptiable`); the selection language refuses ratios >= 1.
EMPTY = 1.0


def pruned_count(ratio: float, n: int, layer: str) -> int:
    """``int(ratio * n)``: the floor of the float product, as HRank does (0.7 * 12 -> 8); `EMPTY`: n."""
    if ratio == EMPTY:
        return n
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"layer {layer!r}: pruning ratio {ratio:g} is outside [0, 1)")
    count = int(ratio * n)
    if count >= n:
        raise ConfigError(f"layer {layer!r}: ratio {ratio:g} would remove all {n} channels; lower it")
    return count


def aligned_width(kept: int, n: int, round_to: int) -> int | None:
    """The multiple of `round_to` nearest to `kept` (halves up), at least `round_to` and below the full
    width `n`; None when no such width exists (``n <= round_to``)."""
    top = (n - 1) // round_to * round_to
    if top < round_to:
        return None
    return min(max(math.floor(kept / round_to + 0.5) * round_to, round_to), top)


def align_ratios(
    groups: Iterable[tuple[Sequence[str], int]],
    ratios: Mapping[str, float],
    round_to: int | None,
    *,
    strict: bool = False,
) -> dict[str, float]:
    """`ratios` with every pruned group's kept width moved to the nearest multiple of `round_to`
    (`aligned_width`); `groups` are (members, out_channels). A group the ratio leaves whole stays whole.
    The aligned ratio ``(k + 0.5) / n`` floors back to exactly the k channels removed under
    `pruned_count`, so plans, MAC counts and the criterion see the aligned width. A group too narrow to
    align (width ≤ round_to) is refused when `strict` (the user named its ratio), otherwise left whole;
    the caller warns. Never grows cost: kept widths only move within the aligned grid, monotone in ratio."""
    if round_to is None:
        return dict(ratios)
    out = dict(ratios)
    for members, n in groups:
        ratio = ratios.get(members[0], 0.0)
        removed = pruned_count(ratio, n, members[0]) if ratio > 0 else 0
        if removed == 0 or ratio == EMPTY:  # an emptied branch has width 0, a multiple of anything
            continue
        kept = aligned_width(n - removed, n, round_to)
        if kept is None:
            if strict:
                raise ConfigError(
                    f"layer {members[0]!r} has {n} output channels; with round_to={round_to} it has no "
                    f"width below {n} that is a multiple of {round_to}, so it cannot be pruned: give it "
                    f"ratio 0 or a smaller round_to (at most {max(1, (n - 1) // 2)})"
                )
            out.update(dict.fromkeys(members, 0.0))
            continue
        out.update(dict.fromkeys(members, (n - kept + 0.5) / n))
    return out


def unalignable(groups: Iterable[tuple[Sequence[str], int]], round_to: int | None) -> list[str]:
    """Leaders of the groups no multiple of `round_to` can prune (width ≤ round_to)."""
    if round_to is None:
        return []
    return [members[0] for members, n in groups if aligned_width(n - 1, n, round_to) is None]
