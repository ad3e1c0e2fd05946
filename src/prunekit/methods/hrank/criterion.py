"""HRank (Lin et al., CVPR 2020): prune the filters whose feature maps have the lowest average rank.

The criterion (specs/hrank.md §1): for every ranked conv, the matrix rank of each output channel's H×W
map, averaged over a few hundred training images. Maps are taken where HRank's code hooks them (after
the ReLU, sometimes after a max-pool or the residual add; see `layouts`). Ranks are computed inside
the shared calibration pass (`feature_pass`), one batched rank test per layer and batch, so memory never
exceeds one layer's maps.

`HRank` is the one-shot variant (HRankPlus): score once on the dense model, then a plan that physically
removes the ``int(rate * n)`` lowest-ranked filters per conv. Layers coupled by a residual add keep one
common channel set. `hrank_legacy_cost` and `true_pruned_cost` count a compress_rate the paper's way and
the real way.
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.measure.cost import Cost, cost
from prunekit.measure.hrank_counter import LegacyCost, hrank_legacy_count
from prunekit.methods.base import (
    Calib,
    LayerGroup,
    Plan,
    Pruned,
    Schedule,
    ScoringMethod,
    couple_ratios,
    plan_from_ratios,
    prunable_groups,
    register_method,
)
from prunekit.methods.base import select_kept as stable_select_kept
from prunekit.methods.budget import BudgetResult, meet_budget
from prunekit.methods.feature_pass import feature_pass
from prunekit.methods.hrank.layouts import PRESETS, EntryOrder, Tap, conv_rates, layout_for
from prunekit.methods.hrank.linear import firing_counts, hidden_linears, linear_taps
from prunekit.methods.selection import Selection, parse_selection
from prunekit.models import create, default_input_shape
from prunekit.surgery.channels import apply as apply_plan

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage

TieBreak = Literal["stable", "numpy"]

#: The shipped rank files of every published result were built from 6 batches of 128 images.
DEFAULT_IMAGES = 768

# ---------------------------------------------------------------- criterion


def feature_map_ranks(maps: Tensor) -> Tensor:
    """Matrix rank of every (H, W) map of a (B, C, H, W) batch, as a (B, C) int64 tensor.

    Default tolerance of `torch.linalg.matrix_rank` (σ > σ_max · max(H, W) · ε), HRank's rule; float32
    because ε is the float32 one HRank used (a half-precision map would get a far coarser ε).

    The result equals `torch.linalg.matrix_rank` map by map, at a fraction of its cost. A map's all-zero
    rows and columns (common after the ReLU) change none of its nonzero singular values, so its rank is at
    most k, the number of nonzero lines on one side; a Cholesky factorisation of the float64 Gram matrix of
    those lines proves most maps' rank equal to k (dead maps: k = 0), first on the shorter side, then on
    the other side for maps with fewer nonzero lines there. The Gram's eigenvalues rank the others; only a
    map with a singular value near the tolerance, where float32 SVD rounding decides, goes to
    `matrix_rank` itself.

    On a CPU the maps are ranked in chunks spread over torch's intra-op threads (`torch.get_num_threads`),
    each op single-threaded meanwhile; the thread setting is restored on return.
    """
    if maps.dim() != 4:
        raise ValueError(f"feature maps must be (B, C, H, W), got shape {tuple(maps.shape)}")
    stack = maps.detach().float().flatten(0, 1)
    h, w = stack.shape[1:]
    first, second = ("columns", "rows") if w <= h else ("rows", "columns")
    with _rank_workers(stack.device) as workers:
        ranks, gram = _certified(stack, first, workers)
        undecided = (ranks < 0).nonzero().squeeze(1)
        if undecided.numel():
            nonzero = stack[undecided].ne(0)
            rows, cols = nonzero.any(2).sum(1), nonzero.any(1).sum(1)
            retried = undecided[rows < cols if first == "columns" else cols < rows]
            if retried.numel():
                ranks[retried] = _certified(stack[retried], second, workers)[0]
                undecided = (ranks < 0).nonzero().squeeze(1)
        if undecided.numel():
            found, unsure = _eigen_ranks_in_chunks(gram[undecided], h, w, workers)
            ranks[undecided] = found
            if bool(unsure.any()):
                ranks[undecided[unsure]] = torch.linalg.matrix_rank(stack[undecided[unsure]])
    return ranks.view(maps.shape[:2])


Side = Literal["columns", "rows"]

#: Bytes of float64 maps or Gram matrices handled at a time on a CPU: a chunk's copy, Gram matrices and
#: factors stay in cache (whole hook outputs of 32×32 maps run ~1.5× slower). A GPU takes one batch.
_CHUNK_BYTES = 1 << 20


@contextmanager
def _rank_workers(device: torch.device) -> Iterator[int]:
    """How many threads rank chunks at once: torch's intra-op thread count on a CPU, 1 on a GPU.

    The rank work is thousands of small ops (1 MiB chunks, LAPACK calls on 8×8 to 32×32 matrices) that
    torch runs one matrix after another; intra-op threads only add synchronisation to them (at two
    threads they took ~3× the CPU seconds of one on a busy machine). So the ops run single-threaded while
    the chunks are spread over the threads, and torch's thread count is restored afterwards.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if threads == 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
        yield 1  # inside a rank worker already: nested chunks would wait on their own pool
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


_POOL_PREFIX = "prunekit-ranks"


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=_POOL_PREFIX)


def _in_chunks(
    count: int, size: int, device: torch.device, work: Callable[[slice], None], workers: int
) -> None:
    """Call ``work(chunk)`` for slices of ``range(count)`` holding `size`-byte float64 (H, W) maps or Gram
    matrices each (`_CHUNK_BYTES` of them on a CPU, all at once on a GPU), over `workers` threads."""
    step = max(1, _CHUNK_BYTES // (8 * max(1, size))) if device.type == "cpu" else max(1, count)
    chunks = [slice(start, start + step) for start in range(0, count, step)]
    if workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            work(chunk)
    else:
        list(_pool(workers).map(work, chunks))  # list(): waits, and re-raises a worker's error here


def _gram(stack: Tensor, side: Side, out: Tensor | None = None) -> Tensor:
    """MᵀM (``"columns"``) or MMᵀ (``"rows"``) of each (N, H, W) map, in float64: products of float32
    values are exact there and the sums round at ~1e-16·‖M‖_F², far below any threshold used here."""
    m = stack.double()
    a, b = (m.mT, m) if side == "columns" else (m, m.mT)
    return torch.matmul(a, b) if out is None else torch.matmul(a, b, out=out)


def _certified(stack: Tensor, side: Side, workers: int) -> tuple[Tensor, Tensor]:
    """(rank where `_certify` proves it, else -1; Gram matrix over `side`) of each (N, H, W) map, chunk by
    chunk: each chunk's Gram matrices are factorised while still in cache."""
    h, w = stack.shape[1:]
    n = w if side == "columns" else h
    gram = torch.empty(stack.shape[0], n, n, dtype=torch.float64, device=stack.device)
    ranks = torch.empty(stack.shape[0], dtype=torch.long, device=stack.device)

    def work(chunk: slice) -> None:
        _gram(stack[chunk], side, out=gram[chunk])
        ranks[chunk] = _certify(gram[chunk], max(h, w))

    _in_chunks(stack.shape[0], max(h * w, n * n), stack.device, work, workers)
    return ranks, gram


def _certify(gram: Tensor, longest: int) -> Tensor:
    """Rank k of each map whose Gram matrix `gram` proves it, -1 elsewhere; `longest` is max(H, W).

    A zero line of the map is a zero row and column of its Gram matrix; the others form the Gram G_k of the
    map without its zero lines, whose nonzero singular values are the map's. The map's rank is k when
    G_k's smallest eigenvalue exceeds τ² for τ = 2·‖M‖_F·max(H, W)·ε — twice matrix_rank's tolerance
    σ_max·max(H, W)·ε at least, so float32 SVD rounding cannot move a singular value across it — which a
    Cholesky factorisation of G − τ²I decides, at a small fraction of an SVD's cost. The zero lines' rows
    and columns are exactly zero, so they stay exactly decoupled through the factorisation when their
    diagonal is set to 1: it succeeds exactly when G_k's does.

    The shift is applied to `gram` in place and its diagonal restored exactly afterwards (copying every
    Gram matrix would cost a tenth of the factorisation).
    """
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    original = diagonal.clone()
    zero = original == 0  # exact: a float64 sum of squares of float32 values vanishes only for a zero line
    frobenius = original.sum(-1, keepdim=True)  # ‖M‖_F², finite for every finite float32 map
    if not bool(torch.isfinite(frobenius).all()):
        raise ConfigError(
            "HRank: feature maps are not finite (NaN or inf); check the model's weights and inputs"
        )
    tol = 2 * longest * torch.finfo(torch.float32).eps
    diagonal.sub_(frobenius * tol**2)
    diagonal.masked_fill_(zero, 1.0)
    info = torch.linalg.cholesky_ex(gram, upper=True).info  # ~15 % faster than lower; either triangle will do
    diagonal.copy_(original)
    return torch.where(info == 0, (~zero).sum(-1), -1)


def _eigen_ranks_in_chunks(gram: Tensor, h: int, w: int, workers: int) -> tuple[Tensor, Tensor]:
    """`_eigen_ranks` chunk by chunk over `workers` threads."""
    rank = torch.empty(gram.shape[0], dtype=torch.long, device=gram.device)
    unsure = torch.empty(gram.shape[0], dtype=torch.bool, device=gram.device)

    def work(chunk: slice) -> None:
        rank[chunk], unsure[chunk] = _eigen_ranks(gram[chunk], h, w)

    _in_chunks(gram.shape[0], gram.shape[1] ** 2, gram.device, work, workers)
    return rank, unsure


def _eigen_ranks(gram: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """(rank, unsure) of each map from its Gram matrix's eigenvalues σ².

    The symmetric eigensolver is several times cheaper than an SVD. Its σ are accurate to ~1e-8·σ_max,
    while float32 SVD — what `matrix_rank` runs — moves a singular value by a few ε·σ_max (its tolerance
    max(H, W)·ε·σ_max is chosen to exceed that). A map with any σ within half the tolerance of it is
    `unsure`: there the two may disagree, so the caller asks `matrix_rank`; everywhere else they cannot.
    """
    sigma = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()  # ascending
    tol = sigma[:, -1:] * (max(h, w) * torch.finfo(torch.float32).eps)
    rank = (sigma > tol).sum(1)
    unsure = ((sigma - tol).abs() <= 0.5 * tol).any(1)
    return rank, unsure


def hrank_scores(
    model: nn.Module,
    batches: Tensor | Iterable[Any],
    taps: Sequence[Tap] | None = None,
    n_images: int = DEFAULT_IMAGES,
    batch_size: int = 128,
    linears: Sequence[str] = (),
) -> dict[str, Tensor]:
    """Average feature-map rank per output channel, ``{conv_name: float32 tensor (C,)}``.

    `batches` is an (N, C, H, W) tensor (split into `batch_size` chunks) or an iterable of batches or
    (images, labels) pairs — HRank uses the shuffled, augmented training set; pass a seeded loader to
    make the ranks reproducible. The first `n_images` images are used. The model runs in eval mode
    without gradients on its own device; `taps` default to the architecture's (`layouts.layout_for`).
    Hidden `linears` are scored in the same pass, by their units' firing fractions (`linear`).
    """
    if n_images < 1:
        raise ConfigError(f"n_images must be at least 1, got {n_images}")
    taps = layout_for(model).taps if taps is None else taps
    units = set(linears)
    # Integer rank sums on the model's device, divided once at the end: the exact mean, which HRank's
    # float32 running mean only approximates.
    totals: dict[str, Tensor] = {}

    def rank(layers: tuple[str, ...], maps: Tensor) -> Tensor:
        return firing_counts(maps) if layers[0] in units else feature_map_ranks(maps).sum(0)

    def add(layers: tuple[str, ...], ranks: Tensor) -> None:
        for layer in layers:
            totals[layer] = totals[layer] + ranks if layer in totals else ranks

    # On a CPU with several threads, a tap's maps are ranked by worker threads while the forward goes on
    # to the next layers (everything single-threaded meanwhile): the rank work, thousands of small LAPACK
    # calls, gains nothing from intra-op threads, and overlapping it with the forward keeps every core
    # busy. Results are added in submission order, so the integer sums are the same as sequentially.
    threads = torch.get_num_threads()
    parameter = next(model.parameters(), None)
    overlap = threads > 1 and (parameter is None or parameter.device.type == "cpu")
    pending: deque[tuple[tuple[str, ...], Future[Tensor]]] = deque()

    def reduce(layers: tuple[str, ...], maps: Tensor) -> None:
        if not overlap:
            add(layers, rank(layers, maps))
            return
        # A copy: later layers may overwrite these maps in place (an in-place ReLU or residual add).
        pending.append((layers, _pool(threads).submit(rank, layers, maps.detach().clone())))
        while len(pending) > 2 * threads:  # memory: a few taps' maps in flight, never the whole pass
            add(*_first_done(pending))

    if overlap:
        torch.set_num_threads(1)
    try:
        seen = feature_pass(
            model,
            batches,
            [*taps, *linear_taps(linears)],
            reduce,
            n_images=n_images,
            batch_size=batch_size,
            who="HRank",
        ).images
        while pending:
            add(*_first_done(pending))
    finally:
        for _, future in pending:
            future.cancel()
        for _, future in pending:
            if not future.cancelled():
                future.exception()  # wait: no worker may outlive the thread setting restored below
        if overlap:
            torch.set_num_threads(threads)
    if seen < n_images:
        warnings.warn(
            f"HRank ranked feature maps on {seen} images, fewer than n_images={n_images}", stacklevel=2
        )
    scores = {conv: (total.double() / seen).float().cpu() for conv, total in totals.items()}
    for tap in taps:
        expected = model.get_submodule(tap.conv).out_channels
        if scores[tap.conv].numel() != expected:
            raise ConfigError(
                f"HRank tap for {tap.conv!r} on {tap.module!r}[{tap.start}:{tap.stop}] gives "
                f"{scores[tap.conv].numel()} channels but the conv has {expected}"
            )
    return scores


def _first_done(pending: deque[tuple[tuple[str, ...], Future[Tensor]]]) -> tuple[tuple[str, ...], Tensor]:
    layers, future = pending.popleft()
    return layers, future.result()  # re-raises a worker's error here


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
    """Channel plan pruning each conv by ``rates[conv]`` (a compress_rate read per conv), removing its
    lowest-`scores` filters (without scores: the last ones, which is enough to count a configuration's cost).

    HRank only zero-masks, so its rates for convs whose outputs are added (a residual stage) may differ;
    physically they keep one channel set, pruned at the members' smallest rate (`couple_ratios`, with a
    warning), ranked by the sum of the members' ranks.
    """
    groups = prunable_groups(model, example)
    ratios = couple_ratios(groups, rates, set(rates), from_list=True)
    score = None if scores is None else scores.get
    return plan_from_ratios(groups, ratios, score, lambda s, r, layer: hrank_select(s, r, tie_break, layer))


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
    (``"[0.1]+[0.60]*35+..."``), a preset name (`layouts.PRESETS`), one rate for every entry, glob rules or
    a budget (any layer selection)."""

    rates: str = field(
        default="0.5",
        metadata={"help": "compress_rate: list in HRank's entry order, preset name, or selection"},
    )
    n_images: int = field(default=DEFAULT_IMAGES, metadata={"help": "training images whose maps are ranked"})
    batch_size: int = field(default=128, metadata={"help": "images per ranking forward", "effect": "speed"})
    tie_break: TieBreak = field(
        default="stable", metadata={"help": "equal ranks: lower index first, or numpy's argsort (bit-exact)"}
    )
    schedule: Literal["oneshot", "layerwise"] = field(
        default="oneshot",
        metadata={
            "help": "oneshot (HRankPlus: prune, then fine-tune) or layerwise (mask + fine-tune per entry)"
        },
    )
    mode: Literal["remove", "mask"] = field(
        default="remove",
        metadata={
            "help": "oneshot: remove filters, or zero them as HRank's code does (dead channels then go)"
        },
    )
    skip_zero_rate_stages: bool = field(
        default=False,
        metadata={"help": "layerwise: do not fine-tune stages whose entry prunes nothing", "effect": "data"},
    )
    train_stages: tuple[int, ...] | None = field(
        default=None, metadata={"help": "layerwise: 1-based stages after which to fine-tune (default: all)"}
    )

    def __post_init__(self) -> None:
        if self.mode == "mask" and self.schedule == "layerwise":
            raise ConfigError("mode chooses the one-shot's form; schedule=layerwise always masks: drop mode")
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
class HRank(ScoringMethod):
    """HRank: remove the filters whose feature maps have the lowest average rank (Lin et al., CVPR 2020).

    Ranks are computed once, on the dense model (`prepare`), as HRank's author confirms (issue #15). The
    allocation maps list expressions onto HRank's compress_rate entries (`layouts`); the one-shot removes
    filters physically, ``mode="mask"`` and ``schedule="layerwise"`` reproduce the original's masked runs
    (`schedule`), after which the channels that are truly dead are removed.
    """

    supports_depth = False  # its budget scales HRank's own rate entries (`layer_ratios`)

    name = "hrank"
    Options = HRankOptions
    options: HRankOptions
    presets = PRESETS
    schedule = Schedule(finetune_epochs=30)
    demo = Schedule(finetune_epochs=3, options={"n_images": 256})

    def __init__(self, options: HRankOptions | None = None, selection: Selection | None = None) -> None:
        super().__init__(options, selection)
        self.scores: dict[str, Tensor] | None = None
        masked = self.options.schedule == "layerwise" or self.options.mode == "mask"
        if masked and self.selection.budget is not None:
            raise ConfigError(
                "a MAC budget needs HRank's physical one-shot (schedule=oneshot, mode=remove): the masked "
                "schedules keep channels alive through residual adds, so their MACs are not set by the rates"
            )

    def calib_images(self) -> int:
        return self.options.n_images

    def entries(self, model: nn.Module, groups: Sequence[LayerGroup]) -> list[tuple[str, ...]]:
        return list(layout_for(model).entries)

    def layer_ratios(
        self, model: nn.Module, example: Tensor, groups: list[LayerGroup]
    ) -> tuple[dict[str, float], BudgetResult | None]:
        if self.selection.rules:
            return super().layer_ratios(model, example, groups)
        layout = layout_for(model)
        if self.selection.sequence is not None or self.selection.uniform is not None:
            rates = conv_rates(layout, self.selection.spec)
        else:  # a budget alone scales one rate for every entry
            rates = {conv: 1.0 for convs in layout.entries for conv in convs}
        if self.selection.sequence is None:  # a uniform ratio or a budget: hidden linears too, as for L1
            uniform = 1.0 if self.selection.uniform is None else self.selection.uniform
            names = [name for group in groups for name in group.members]
            rates.update(dict.fromkeys(hidden_linears(model, names), uniform))
        ratios = couple_ratios(groups, rates, set(rates), from_list=True)
        if self.selection.budget is None:
            return ratios, None
        result = meet_budget(model, example, self.selection.budget, ratios)
        return result.ratios, result

    def conv_rates(self, model: nn.Module) -> dict[str, float]:
        """Rate per conv of the masked schedules: the compress_rate read per conv, no coupling."""
        layout = layout_for(model)
        if self.selection.rules:
            names = [conv for convs in layout.entries for conv in convs]
            return self.selection.ratios(names)
        if self.selection.sequence is None and self.selection.uniform is None:
            return dict(self.budget.ratios) if self.budget is not None else {}  # a budget: what it found
        return conv_rates(layout, self.selection.spec)

    def prepare(self, model: nn.Module, calib: Calib | Iterable[Any] | None) -> None:
        if calib is None:
            raise ConfigError("HRank needs training images to rank feature maps; calib is None")
        self.conv_rates(model)  # a wrong-length list fails before the ranking
        linears: list[str] = []
        if self.selection.sequence is None and not self.selection.rules and isinstance(calib, Tensor):
            names = (name for group in prunable_groups(model, calib[:1]) for name in group.members)
            linears = hidden_linears(model, names)  # ranked in the convs' pass
        self.scores = hrank_scores(
            model, calib, n_images=self.options.n_images, batch_size=self.options.batch_size, linears=linears
        )

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor | None:
        if self.scores is None:
            self.prepare(model, calib)
        assert self.scores is not None
        return self.scores.get(layer)

    def select(self, scores: Tensor, ratio: float, layer: str) -> list[int]:
        return hrank_select(scores, ratio, self.options.tie_break, layer)

    def prune(self, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
        from prunekit.methods.hrank.schedule import hrank_prune

        return hrank_prune(self, model, calib, stage)
