"""``round_to`` for methods that choose their own widths (global thresholds, sparsity, redundancy graphs).

Scoring methods align inside their allocation (`selection.align_ratios`: nearest multiple, budget searched
over aligned widths). A method that decides its widths itself is aligned afterwards: every coupled group the
method pruned to a width that is not a multiple of ``round_to`` loses its weakest further channels (smallest
summed L1 norm of its members' filters) down to the multiple below. Rounding down never adds back what the
method removed, so it works on any pruned model, whatever the method did to reach it; a group the method
left narrower than ``round_to`` is refused, since only adding channels could align it.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.methods.base import Pruned, prunable_groups
from prunekit.methods.selection import Selection

_LAYERS = (nn.Conv2d, nn.Linear)


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for name, m in model.named_modules()
        if isinstance(m, _LAYERS)
    }


def misaligned(dense: nn.Module, pruned: nn.Module, round_to: int) -> dict[str, int]:
    """Layers whose width the pruning changed to something that is not a multiple of `round_to`."""
    before = _widths(dense)
    return {
        name: width
        for name, width in _widths(pruned).items()
        if name in before and width != before[name] and width % round_to
    }


def _align_ranks(dense: nn.Module, pruned: Pruned, example: Tensor, round_to: int, method: str) -> Pruned:
    """Factorised convs (low-rank plans) get ranks that are multiples of `round_to`: each rank rounded down
    and the factorisation rebuilt from the dense conv at that rank, which is the method's truncated SVD
    shortened by its weakest components."""
    from prunekit.surgery import LowRankConv2d, LowRankPlan, apply

    factorised = {n: m for n, m in pruned.model.named_modules() if isinstance(m, LowRankConv2d)}
    off = {n: m.rank for n, m in factorised.items() if m.rank % round_to}
    if not off:
        return pruned
    narrow = {n: r for n, r in off.items() if r < round_to}
    if narrow:
        shown = ", ".join(f"{n} (rank {r})" for n, r in list(narrow.items())[:6])
        raise ConfigError(
            f"method {method!r} left factorised convs with ranks below round_to={round_to}: {shown}; "
            "keep more rank (a larger budget or a lower threshold) or give a smaller round_to"
        )
    if misaligned(dense, pruned.model, 1):
        raise ConfigError(
            f"method {method!r} both removed channels and factorised convs; round_to={round_to} aligns one "
            "or the other, not both: drop round_to"
        )
    ranks = {n: (m.scheme, m.rank - m.rank % round_to) for n, m in factorised.items()}
    pruned.model = apply(dense, LowRankPlan(ranks), example)
    details = {**pruned.details, "round_to": round_to, "aligned_after": sorted(off)}
    if isinstance(details.get("ranks"), dict):
        details["ranks"] = {n: rank for n, (_, rank) in ranks.items()}
    pruned.details = details
    return pruned


def align_pruned(dense: nn.Module, pruned: Pruned, example: Tensor, round_to: int, method: str) -> Pruned:
    """`pruned` with every changed width (and every factorised conv's rank) rounded down to a multiple of
    `round_to` (see the module doc)."""
    from prunekit.surgery import apply

    pruned = _align_ranks(dense, pruned, example, round_to, method)
    off = misaligned(dense, pruned.model, round_to)
    if not off:
        return pruned
    if pruned.masks is not None:
        raise ConfigError(
            f"method {method!r} keeps element-wise masks, which round_to={round_to} cannot align "
            "(it sets channel widths); drop round_to or prune whole channels"
        )
    too_narrow = {name: w for name, w in off.items() if w < round_to}
    if too_narrow:
        shown = ", ".join(f"{name} ({w})" for name, w in list(too_narrow.items())[:6])
        raise ConfigError(
            f"method {method!r} left layers with fewer than round_to={round_to} channels: {shown}; "
            "prune less (a larger budget) or give a smaller round_to"
        )
    plan: dict[str, list[int]] = {}
    for group in prunable_groups(pruned.model, example):
        if group.members[0] not in off:
            continue
        # Summed per channel unit, so members of other widths (concatenations, chunks) count alike.
        norms = sum(
            group.unit_scores(name, pruned.model.get_submodule(name).weight.detach().flatten(1).abs().sum(1))
            for name in group.members
        )
        keep = group.out_channels // round_to * round_to
        # Stable sort: among equal norms the earlier unit stays.
        order = norms.sort(descending=True, stable=True).indices[:keep]
        plan.update(group.kept_channels(sorted(order.tolist())))
    pruned.model = apply(pruned.model, plan, example)
    pruned.details = {**pruned.details, "round_to": round_to, "aligned_after": sorted(plan)}
    return pruned


#: ``round_to`` values measured on this machine; ``auto+depth`` also lets a MAC budget remove whole
#: residual blocks where that runs faster (`latency_budget.fastest_aligned`).
AUTO_FORMS = ("auto", "auto+depth")


def resolve_round_to(value: int | str | None, threads: int = 1, batch_size: int = 1) -> int | None:
    """``round_to`` as the user gave it (a number, a numeric string, ``"auto"`` or ``"auto+depth"``) as a
    whole number; the auto forms run the cached width sweep of `measure.latency_table.preferred_round_to`."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in AUTO_FORMS:
            from prunekit.measure.latency_table import preferred_round_to

            return preferred_round_to(threads, "cpu", batch_size)
        if not text.isdigit():
            raise ConfigError(f"round_to must be a whole number ≥ 1, 'auto' or 'auto+depth', got {value!r}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"round_to must be a whole number ≥ 1, 'auto' or 'auto+depth', got {value!r}")
    return value


def deployment_selection(
    selection: Selection | None, round_to: int | str | None, threads: int = 1, batch_size: int = 1
) -> Selection | None:
    """`selection` with `round_to` resolved and added, and a latency budget stated at the run's batch size
    and thread count (what the lookup table and the final measurement use). A MAC budget with
    ``round_to="auto"`` is stated there too: among the aligned widths that meet it, the search prefers
    those the latency table predicts fastest at that batch size and thread count."""
    r = resolve_round_to(round_to, threads, batch_size)
    text = round_to.strip().lower() if isinstance(round_to, str) else ""
    auto, depth = text in AUTO_FORMS, text == "auto+depth"
    if depth and (selection is None or selection.budget is None or selection.budget.counts != "macs"):
        raise ConfigError(
            "round_to=auto+depth removes whole residual blocks where a MAC budget then runs faster: give "
            "target_macs= or speedup= (--target-macs / --speedup), or use round_to=auto"
        )
    if r is not None:
        selection = (Selection.of(round_to=r) if selection is None else selection).with_round_to(r, auto)
        selection = dataclasses.replace(selection, depth=depth)
    if (
        selection is not None
        and selection.budget is not None
        and (selection.budget.counts == "latency" or (auto and selection.budget.counts == "macs"))
    ):
        budget = dataclasses.replace(selection.budget, batch_size=batch_size, threads=threads)
        selection = dataclasses.replace(selection, budget=budget)
    return selection
