"""HRank (Lin et al., CVPR 2020): prune the filters whose feature maps have the lowest average rank.

The criterion (specs/hrank.md §1): for every ranked conv, the matrix rank of each output channel's H×W
map, averaged over a few hundred training images. Maps are taken where HRank's code hooks them (after
the ReLU, sometimes after a max-pool or the residual add; see `layouts`). Ranks are computed inside
forward hooks, one batched SVD per layer and batch, so memory never exceeds one layer's maps.

`HRank` is the one-shot variant (HRankPlus): score once on the dense model, then a plan that physically
removes the ``int(rate * n)`` lowest-ranked filters per conv. Layers coupled by a residual add keep one
common channel set. `hrank_legacy_cost` and `true_pruned_cost` count a compress_rate the paper's way and
the real way.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.measure.cost import Cost, cost
from prunekit.measure.hrank_counter import LegacyCost, hrank_legacy_count, pruned_filters
from prunekit.methods.base import Calib, Method, Plan, example_input, prunable_groups, register_method
from prunekit.methods.base import select_kept as stable_select_kept
from prunekit.methods.hrank.layouts import PRESETS, EntryOrder, Tap, conv_rates, layout_for
from prunekit.methods.selection import parse_selection
from prunekit.models import create, default_input_shape
from prunekit.surgery.channels import apply as apply_plan

TieBreak = Literal["stable", "numpy"]

#: The shipped rank files of every published result were built from 6 batches of 128 images.
DEFAULT_IMAGES = 768

# ---------------------------------------------------------------- criterion


def feature_map_ranks(maps: Tensor) -> Tensor:
    """Matrix rank of every (H, W) map of a (B, C, H, W) batch, as a (B, C) int64 tensor.

    Default tolerance of `torch.linalg.matrix_rank` (σ > σ_max · max(H, W) · ε), HRank's rule; float32
    because ε is the float32 one HRank used (a half-precision map would get a far coarser ε).
    """
    if maps.dim() != 4:
        raise ValueError(f"feature maps must be (B, C, H, W), got shape {tuple(maps.shape)}")
    stack = maps.detach().float().flatten(0, 1)
    ranks = torch.zeros(stack.shape[0], dtype=torch.long, device=stack.device)
    # Two cheap exact shortcuts before the SVD, which dominates the cost: all-zero maps (dead filters
    # after the ReLU) have rank 0, and most live maps are provably full rank.
    undecided = torch.count_nonzero(stack, dim=(1, 2)).nonzero().squeeze(1)
    live = stack if undecided.numel() == stack.shape[0] else stack[undecided]
    full = _surely_full_rank(live)
    ranks[undecided[full]] = min(stack.shape[1:])
    if not bool(full.all()):
        ranks[undecided[~full]] = torch.linalg.matrix_rank(live[~full])
    return ranks.view(maps.shape[:2])


def _surely_full_rank(stack: Tensor) -> Tensor:
    """True where an (N, H, W) map's smallest singular value exceeds twice matrix_rank's tolerance.

    σ_min > τ ⇔ G − τ²I is positive definite for the Gram matrix G = MᵀM (or MMᵀ, the smaller), which a
    Cholesky factorisation decides at a small fraction of an SVD's cost. τ uses ‖M‖_F ≥ σ_max and a factor
    2, so every map it accepts has σ_min well above matrix_rank's own threshold σ_max·max(H, W)·ε even after
    float32 SVD rounding; the maps near the threshold go to the SVD. Float64 keeps the Gram's rounding
    (~1e-16·σ_max²) far below τ² (~1e-11·‖M‖_F²).
    """
    if stack.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=stack.device)
    h, w = stack.shape[1:]
    m = stack.double()
    gram = m @ m.mT if h <= w else m.mT @ m
    tol = 2 * max(h, w) * torch.finfo(torch.float32).eps
    shift = gram.diagonal(dim1=-2, dim2=-1).sum(-1) * tol**2  # ‖M‖_F² · tol²
    gram -= shift[:, None, None] * torch.eye(min(h, w), dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky_ex(gram).info == 0


def _batches(source: Tensor | Iterable[Any], batch_size: int) -> Iterable[Tensor]:
    if isinstance(source, Tensor):
        yield from source.split(batch_size)
        return
    for item in source:
        yield item if isinstance(item, Tensor) else item[0]  # (images, labels, ...) from a loader


def hrank_scores(
    model: nn.Module,
    batches: Tensor | Iterable[Any],
    taps: Sequence[Tap] | None = None,
    n_images: int = DEFAULT_IMAGES,
    batch_size: int = 128,
) -> dict[str, Tensor]:
    """Average feature-map rank per output channel, ``{conv_name: float32 tensor (C,)}``.

    `batches` is an (N, C, H, W) tensor (split into `batch_size` chunks) or an iterable of batches or
    (images, labels) pairs — HRank uses the shuffled, augmented training set; pass a seeded loader to
    make the ranks reproducible. The first `n_images` images are used. The model runs in eval mode
    without gradients on its own device; `taps` default to the architecture's (`layouts.layout_for`).
    """
    if n_images < 1:
        raise ConfigError(f"n_images must be at least 1, got {n_images}")
    taps = layout_for(model).taps if taps is None else taps
    modules = dict(model.named_modules())
    missing = sorted(
        {t.module for t in taps if t.module not in modules} | {t.conv for t in taps} - set(modules)
    )
    if missing:
        raise ConfigError(f"HRank taps name modules the model does not have: {', '.join(missing)}")

    # One rank computation per distinct (module, channel slice); several convs may share it.
    slices: dict[nn.Module, dict[tuple[int, int | None], list[str]]] = defaultdict(lambda: defaultdict(list))
    for tap in taps:
        slices[modules[tap.module]][(tap.start, tap.stop)].append(tap.conv)
    names = {module: name for name, module in modules.items()}
    # Integer rank sums on the model's device, divided once at the end: the exact mean, which HRank's
    # float32 running mean only approximates.
    totals: dict[str, Tensor] = {}
    calls: dict[nn.Module, int] = defaultdict(int)

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        calls[module] += 1
        if calls[module] > 1:
            raise ConfigError(
                f"module {names[module]!r} runs more than once per forward; HRank cannot tell its calls "
                "apart — give each use its own module"
            )
        for (start, stop), convs in slices[module].items():
            ranks = feature_map_ranks(output[:, start:stop]).sum(0)
            for conv in convs:
                totals[conv] = totals[conv] + ranks if conv in totals else ranks

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    handles = [module.register_forward_hook(hook) for module in slices]
    training = {module: module.training for module in modules.values()}
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in _batches(batches, batch_size):
                batch = batch[: n_images - seen].to(device, non_blocking=True)
                calls.clear()
                model(batch)
                seen += len(batch)
                if seen >= n_images:
                    break
    finally:
        for module, flag in training.items():
            module.train(flag)
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ConfigError("HRank needs images to rank feature maps; the batches were empty")
    if seen < n_images:
        warnings.warn(
            f"HRank ranked feature maps on {seen} images, fewer than n_images={n_images}", stacklevel=2
        )
    scores = {conv: (total.double() / seen).float().cpu() for conv, total in totals.items()}
    for tap in taps:
        expected = modules[tap.conv].out_channels
        if scores[tap.conv].numel() != expected:
            raise ConfigError(
                f"HRank tap for {tap.conv!r} on {tap.module!r}[{tap.start}:{tap.stop}] gives "
                f"{scores[tap.conv].numel()} channels but the conv has {expected}"
            )
    return scores


# ---------------------------------------------------------------- selection and plan


def hrank_select(
    ranks: Tensor, rate: float, tie_break: TieBreak = "stable", layer: str = "<layer>"
) -> list[int]:
    """Sorted kept indices after removing the ``int(rate * n)`` lowest ranks.

    "stable": among equal ranks the lower index is removed first. "numpy": HRank's own
    ``np.argsort(rank)[pruned:]`` (introsort, not stable), for bit-exact reproduction of its kept sets.
    """
    if tie_break == "stable":
        return stable_select_kept(ranks, rate, layer)
    if tie_break != "numpy":
        raise ConfigError(f"tie_break must be 'stable' or 'numpy', got {tie_break!r}")
    kept = stable_select_kept(ranks, rate, layer)  # validates rate and values
    order = np.argsort(ranks.detach().cpu().numpy())
    return sorted(order[ranks.numel() - len(kept) :].tolist())


def hrank_plan(
    model: nn.Module,
    example: Tensor,
    rates: Mapping[str, float],
    scores: Mapping[str, Tensor] | None = None,
    tie_break: TieBreak = "stable",
) -> Plan:
    """Channel plan pruning each conv by ``rates[conv]``, removing its lowest-`scores` filters (without
    scores: the last ones, which is enough to count a configuration's cost).

    Convs whose outputs are added (a residual stage) must keep one channel set. HRank only zero-masks
    them, so its rates for them may differ; a channel of the shared stream can only go when every writer
    drops it, so the group is pruned at its members' smallest rate (a warning says so), ranked by the sum
    of the members' ranks.
    """
    plan: Plan = {}
    lowered: list[str] = []
    for group in prunable_groups(model, example):
        member_rates = {name: rates.get(name, 0.0) for name in group.members}
        rate = min(member_rates.values())
        if len(set(member_rates.values())) > 1 and max(member_rates.values()) > 0:
            lowered.append(f"{group.members[0]} (+{len(group.members) - 1} coupled) at {rate:g}")
        if rate == 0:
            continue
        if scores is None:
            kept = list(range(group.out_channels - pruned_filters(rate, group.out_channels)))
        else:
            ranked = [scores[name] for name in group.members if name in scores]
            if not ranked:
                raise ConfigError(
                    f"no HRank scores for {', '.join(group.members)}; rank them before planning"
                )
            kept = hrank_select(torch.stack(ranked).sum(0), rate, tie_break, group.members[0])
        plan.update(dict.fromkeys(group.members, kept))
    if lowered:
        warnings.warn(
            "layers that share output channels through residual adds got different HRank rates; pruned at "
            f"their smallest: {'; '.join(lowered)}",
            stacklevel=2,
        )
    return plan


# ---------------------------------------------------------------- counting a compress_rate


def hrank_legacy_cost(
    arch: str, compress_rate: str | Sequence[float], mapping: EntryOrder = "mask"
) -> LegacyCost:
    """FLOPs/params of `arch` pruned by `compress_rate` as HRank's counter prints them (§5.1): the
    published numbers. ``mapping="flops_script"`` reads the rates as HRank's FLOPs script does (ResNet-50
    stage order, GoogLeNet's c4 index bug), which the published GoogLeNet 94.07 % row needs."""
    # Only shapes matter: a meta-device model skips initialising and computing real tensors.
    with torch.device("meta"):
        model = create(arch)
    layout = layout_for(model)
    rates = conv_rates(layout, compress_rate, mapping)
    return hrank_legacy_count(model, default_input_shape(arch), rates, layout.legacy_inputs)


def true_pruned_cost(arch: str, compress_rate: str | Sequence[float]) -> Cost:
    """Real conv+linear MACs and params (`measure.cost`) of `arch` physically pruned by `compress_rate`:
    input widths shrink with the previous layer, residual stages at their smallest rate (`hrank_plan`)."""
    model = create(arch)
    shape = default_input_shape(arch)
    example = torch.zeros(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the coupled-rate notice; the counts speak for themselves
        plan = hrank_plan(model, example, conv_rates(layout_for(model), compress_rate))
    return cost(apply_plan(model, plan, example), shape)


# ---------------------------------------------------------------- the method


@dataclass
class HRankOptions:
    """`rates` is HRank's compress_rate: a list expression in HRank's entry order
    (``"[0.1]+[0.60]*35+..."``), a preset name (`layouts.PRESETS`) or one rate for every entry."""

    rates: str = "0.5"
    n_images: int = DEFAULT_IMAGES
    batch_size: int = 128
    tie_break: TieBreak = "stable"
    # How the pipeline fine-tunes: "oneshot" (HRankPlus: prune, then one fine-tune) or "layerwise"
    # (original HRank: one mask-and-fine-tune stage per entry, §3.1).
    schedule: Literal["oneshot", "layerwise"] = "oneshot"
    # One-shot only: "remove" prunes physically (HRankPlus); "mask" zeroes the filters as HRank's own
    # code does, then removes only the channels that are truly dead (`prunekit.methods.hrank.schedule`). The
    # layerwise schedule always masks.
    mode: Literal["remove", "mask"] = "remove"
    # HRank fine-tunes even the stages whose entry prunes nothing; True skips them (layerwise only).
    skip_zero_rate_stages: bool = False
    # Layerwise only: the 1-based HRank stages (one per compress_rate entry) after which to fine-tune; the
    # others only add their masks. HRank's ResNet-50 trains after the stem and each complete bottleneck
    # (spec §3.1). None: every stage.
    train_stages: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.train_stages is not None:
            if self.schedule != "layerwise":
                raise ConfigError("train_stages chooses stages of schedule=layerwise; the one-shot has none")
            if not self.train_stages or min(self.train_stages) < 1:
                got = list(self.train_stages)
                raise ConfigError(f"train_stages must list stage numbers from 1 (HRank's cov_id), got {got}")
            self.train_stages = tuple(sorted(set(self.train_stages)))
        parse_selection(PRESETS.get(self.rates.strip(), self.rates))  # syntax errors now, length at plan
        if self.n_images < 1 or self.batch_size < 1:
            raise ConfigError(
                f"n_images and batch_size must be positive, got {self.n_images}, {self.batch_size}"
            )


@register_method
class HRank(Method):
    """Ranks are computed once, on the dense model (`prepare`), as HRank's author confirms (issue #15)."""

    name = "hrank"
    Options = HRankOptions
    options: HRankOptions

    def __init__(self, options: HRankOptions | None = None) -> None:
        super().__init__(options)
        self.scores: dict[str, Tensor] | None = None

    def prepare(self, model: nn.Module, calib: Calib | Iterable[Any] | None) -> None:
        if calib is None:
            raise ConfigError("HRank needs training images to rank feature maps; calib is None")
        conv_rates(layout_for(model), self.options.rates)  # a wrong-length list fails before the ranking
        self.scores = hrank_scores(
            model, calib, n_images=self.options.n_images, batch_size=self.options.batch_size
        )

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        example = example_input(calib, self.name)
        rates = conv_rates(layout_for(model), self.options.rates)
        if self.scores is None:
            self.prepare(model, calib)
        assert self.scores is not None
        return hrank_plan(model, example, rates, self.scores, self.options.tie_break)
