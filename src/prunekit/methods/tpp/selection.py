"""Which filters TPP and GReg push down and remove (specs/tpp.md §1).

The allocation (which layers lose how many filters) is the shared selection language — globs with the last
match winning (TPP's ``--stage_pr "*layer*.conv1:0.9"``), list expressions, a uniform ratio or a budget —
plus TPP's ``--skip_layers`` and its tolerance of the ``module.`` prefix that ``nn.DataParallel`` adds to
names. The count and the criterion are TPP's: ``min(⌈PR·N⌉, ⌊0.995·N⌋)`` filters with the smallest mean |w|
(GReg caps at N − 1), chosen once and never revised.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.methods.base import LayerGroup, layer_ratios
from prunekit.methods.budget import BudgetResult, meet_budget
from prunekit.methods.selection import Selection, pruned_count

#: What ``nn.DataParallel`` / DDP put before every module name; TPP's patterns are written with it.
WRAPPER_PREFIX = "module."
_LEARNABLE = (nn.Conv2d, nn.Linear)


def tpp_count(ratio: float, n: int, cap: float = 0.995) -> int:
    """Filters removed from a layer of `n` at `ratio`: ``min(⌈ratio·n⌉, ⌊cap·n⌋)``.

    The product is the plain float one, as in the released code, so the §1.7 widths come out exactly
    (0.7 · 16 = 11.2 → 12 removed, 4 kept). ``cap=0.995`` is TPP's, ``cap=None`` GReg's ``n − 1``."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio {ratio:g} is outside [0, 1): it is the fraction of filters removed")
    limit = n - 1 if cap is None else math.floor(cap * n)
    return max(0, min(math.ceil(ratio * n), limit))


def strip_prefix(pattern: str) -> str:
    """A pattern written for a wrapped model (``module.layer1.0.conv1``) as it names the bare model."""
    return pattern[len(WRAPPER_PREFIX) :] if pattern.startswith(WRAPPER_PREFIX) else pattern


def unwrapped(selection: Selection) -> Selection:
    """`selection` with the wrapper prefix removed from its glob patterns."""
    if not selection.rules:
        return selection
    rules = tuple((strip_prefix(p), r) for p, r in selection.rules)
    return dataclasses.replace(selection, rules=rules)


def parse_skip(text: str) -> tuple[str, ...]:
    """TPP's ``--skip_layers``: a comma list of fnmatch patterns, optional surrounding ``[]``."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return tuple(strip_prefix(p.strip().strip("'\"")) for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class Allocation:
    """Per coupled group (layers that share output channels), how many filters go; `budget` is the search
    that chose the ratios, if any."""

    groups: tuple[LayerGroup, ...]
    removed: tuple[int, ...]
    ratios: dict[str, float]
    budget: BudgetResult | None


def learnable_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _LEARNABLE)]


def allocate(
    model: nn.Module,
    example: Tensor,
    groups: Sequence[LayerGroup],
    selection: Selection,
    skip: Sequence[str],
    cap: float | None,
) -> Allocation:
    """Ratios of `selection` over the prunable layers (coupled groups get one ratio), `skip` patterns forced
    to 0 after them, then the counts. With a budget the counts are the search's own (``int(ratio·n)``,
    what its exact MAC count assumed); otherwise TPP's ceil rule."""
    prunable = [name for group in groups for name in group.members]
    learnable = learnable_layers(model)
    for pattern, ratio in selection.rules:
        fixed = [n for n in fnmatch.filter(learnable, pattern) if n not in prunable]
        if ratio > 0 and fixed and not any(fnmatch.fnmatch(n, s) for n in fixed for s in skip):
            raise ConfigError(
                f"layer pattern {pattern!r} in {selection.spec!r} selects {fixed[0]!r}, whose output "
                "channels cannot be removed (the classifier's outputs are the model's outputs); narrow "
                "the pattern or name the layer in skip_layers"
            )
    for pattern in skip:
        if not fnmatch.filter(learnable, pattern):
            shown = ", ".join(learnable[:6]) + (", ..." if len(learnable) > 6 else "")
            raise ConfigError(
                f"skip_layers pattern {pattern!r} matches no conv or linear layer; layers are named like: "
                f"{shown}"
            )
    ratios, _ = layer_ratios(model, example, list(groups), dataclasses.replace(selection, budget=None))
    for group in groups:
        # One skipped member keeps the whole group: its channels are shared.
        if any(fnmatch.fnmatch(name, pattern) for name in group.members for pattern in skip):
            ratios.update(dict.fromkeys(group.members, 0.0))
    # The penalties and the layer-by-layer zeroing act per filter of equal-width members; a group whose
    # members differ in width (a concatenation, a chunk, a grouped conv) keeps its channels, said once.
    uneven = [g for g in groups if g.unit_of is not None and ratios.get(g.members[0], 0.0) > 0]
    if uneven:
        named = {n for pattern, _ in selection.rules for n in fnmatch.filter(prunable, pattern)}
        asked = [m for g in uneven for m in g.members if m in named]
        if asked:
            raise ConfigError(
                f"TPP/GReg regularise filters of coupled layers with equal widths; {', '.join(asked[:4])} "
                "share channels with layers of other widths (a concatenation, chunk or grouped conv): "
                "leave them out of the selection or name them in skip_layers"
            )
        for group in uneven:
            ratios.update(dict.fromkeys(group.members, 0.0))
        shown = ", ".join(g.members[0] for g in uneven[:6]) + (", ..." if len(uneven) > 6 else "")
        warnings.warn(
            f"TPP/GReg keep every channel of {len(uneven)} coupled group(s) whose layers differ in width "
            f"(concatenations, chunks, grouped convs): {shown}",
            stacklevel=3,
        )
    budget = None
    if selection.budget is not None:
        if selection.budget.kind == "target_density":
            raise ConfigError(
                "target_density budgets element-wise masks; TPP and GReg remove whole filters: give "
                "target_macs= or speedup="
            )
        budget = meet_budget(model, example, selection.budget, ratios)
        ratios = budget.ratios
    removed = []
    for group in groups:
        ratio = ratios.get(group.members[0], 0.0)
        if budget is not None:
            removed.append(pruned_count(ratio, group.out_channels, group.members[0]) if ratio > 0 else 0)
        else:
            removed.append(tpp_count(ratio, group.out_channels, cap))
    if not any(removed):
        raise ConfigError(
            f"the selection {selection.spec!r} removes no filter from any layer"
            + (f" once skip_layers {','.join(skip)} are kept" if skip else "")
        )
    return Allocation(tuple(groups), tuple(removed), ratios, budget)


def filter_scores(model: nn.Module, members: Sequence[str]) -> Tensor:
    """Mean |w| per output filter (≡ the L1 norm's ranking within a layer), summed over coupled members."""
    total: Tensor | None = None
    for name in members:
        weight = model.get_submodule(name).weight.detach().float().flatten(1)
        score = weight.abs().mean(1).cpu()
        total = score if total is None else total + score
    assert total is not None
    return total


def pick(scores: Tensor, n_removed: int, how: str, generator: torch.Generator | None = None) -> list[int]:
    """Indices removed: the `n_removed` smallest scores (``min``), the largest (``max``) or a uniformly
    random set (``rand``). Sorted ascending; among equal scores the lower index goes first."""
    if n_removed <= 0:
        return []
    if not torch.isfinite(scores).all():
        raise ConfigError("filter scores are not finite (NaN/inf in the weights); cannot pick filters")
    if how == "min":
        order = torch.sort(scores, stable=True).indices
    elif how == "max":
        order = torch.sort(-scores, stable=True).indices
    elif how == "rand":
        order = torch.randperm(len(scores), generator=generator)
    else:
        raise ConfigError(f"pick must be one of min, max, rand; got {how!r}")
    return sorted(order[:n_removed].tolist())
