"""TPP (Wang & Fu, ICLR 2023) and GReg-1/2 (Wang et al., ICLR 2021): push the filters to be removed
towards zero with a growing penalty, hold, then remove them (specs/tpp.md §1–§3, §6.2–§6.3).

- ``tpp`` (``--opp_scheme 5``): filters chosen once on the dense weights (smallest mean |w|); the loss gains
  ``α·λ·Σ_l (1/N_l²)‖G_l ⊙ (1 − m mᵀ)‖²`` (gram term) plus ``λ/2`` times the squared removed weights,
  biases and following-BatchNorm γ, β; λ grows by Δ every K_u steps up to τ, is held for K_s steps during
  which the removed filters are zeroed layer by layer, then they are removed physically.
- ``greg1``: the same picks and schedule with the plain growing L2 on the removed filters' weights only.
- ``greg2``: a uniform growing L2 on every filter of the selected layers first, the picks on the weights it
  leaves, then GReg-1's growth on the removed filters and a slight anti-decay on the kept ones.

The sparsify stage declares its own length from the schedule (`sparsify_steps`); its optimiser (SGD at
a constant lr 1e-3, momentum 0.9) is `schedule.sparsify`. All state changes happen in `after_step`, from
the weights, identically on every rank under DDP; the penalty is a loss term, so DDP averages identical
gradients once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.methods.base import (
    Calib,
    Plan,
    Pruned,
    Schedule,
    ScoringMethod,
    ScoringOptions,
    example_input,
    prunable_groups,
    register_method,
)
from prunekit.methods.selection import Selection
from prunekit.methods.tpp import regularizers
from prunekit.methods.tpp.schedule import Clock, Ramp, growth_iterations, stage_steps
from prunekit.methods.tpp.selection import (
    allocate,
    filter_scores,
    learnable_layers,
    parse_skip,
    pick,
    unwrapped,
)
from prunekit.models.probe import batchnorm_after, probe
from prunekit.surgery import apply

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage

_SPARSIFY = {"effect": "sparsify"}


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value:g}")


@dataclass
class RegOptions(ScoringOptions):
    """Options shared by TPP and GReg: the selection (`rates`, `skip_layers`), the pick and the schedule."""

    skip_layers: str = field(
        default="",
        metadata={"help": "fnmatch patterns kept whole after rates, e.g. '*features.0' (TPP --skip_layers)"},
    )
    pick: Literal["min", "max", "rand"] = field(
        default="min", metadata={"help": "remove the smallest mean|w| (min), the largest, or random filters"}
    )
    seed: int = field(default=42, metadata={"help": "seed of pick=rand"})
    update_reg_interval: int = field(
        default=5, metadata={"help": "K_u: steps between λ increments (CIFAR recipes 10)", **_SPARSIFY}
    )
    reg_granularity: float = field(default=1e-4, metadata={"help": "Δ: λ increment per update", **_SPARSIFY})
    reg_upper_limit: float = field(default=1.0, metadata={"help": "τ: λ where growth stops", **_SPARSIFY})
    stabilize_reg_interval: int = field(
        default=40000, metadata={"help": "K_s: steps held at λ = τ before removal (CIFAR 10000)", **_SPARSIFY}
    )
    stop_on_mag_ratio: bool = field(
        default=False,
        metadata={
            "help": "also stop growing when EMA(mean|w| kept / removed) reaches mag_ratio_limit",
            **_SPARSIFY,
        },
    )
    mag_ratio_limit: float = field(
        default=1000.0, metadata={"help": "the magnitude-ratio stop's limit", **_SPARSIFY}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("update_reg_interval", "reg_granularity", "reg_upper_limit", "stabilize_reg_interval"):
            _positive(name, getattr(self, name))
        _positive("mag_ratio_limit", self.mag_ratio_limit)
        if self.seed != 42 and self.pick != "rand":
            raise ConfigError(f"seed is the seed of pick=rand; with pick={self.pick!r} it has no effect")
        if self.mag_ratio_limit != 1000.0 and not self.stop_on_mag_ratio:
            raise ConfigError("mag_ratio_limit acts only with stop_on_mag_ratio=true")
        parse_skip(self.skip_layers)


@dataclass
class TPPOptions(RegOptions):
    lw_opp: float = field(default=1000.0, metadata={"help": "α: weight of the gram term", **_SPARSIFY})
    l2_reg: bool = field(
        default=True,
        metadata={"help": "the released code's growing L2 on removed weights and biases", **_SPARSIFY},
    )
    bn_reg: bool = field(
        default=True, metadata={"help": "the BN term: λ/2 (γ² + β²) of removed channels", **_SPARSIFY}
    )
    zero_out: bool = field(
        default=True,
        metadata={"help": "zero removed filters layer by layer while holding (released code)", **_SPARSIFY},
    )
    zero_out_interval: int = field(
        default=100, metadata={"help": "Z: layer i is zeroed from hold step (i+1)·Z on", **_SPARSIFY}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("lw_opp", self.lw_opp)
        _positive("zero_out_interval", self.zero_out_interval)
        if self.zero_out_interval != 100 and not self.zero_out:
            raise ConfigError("zero_out_interval acts only with zero_out=true")


@dataclass
class GReg1Options(RegOptions):
    stop_on_mag_ratio: bool = field(
        default=True,
        metadata={
            "help": "also stop growing when EMA(mean|w| kept / removed) reaches mag_ratio_limit",
            **_SPARSIFY,
        },
    )


@dataclass
class GReg2Options(GReg1Options):
    reg_granularity_pick: float = field(
        default=1e-5, metadata={"help": "increment of the uniform L2 before the pick", **_SPARSIFY}
    )
    reg_upper_limit_pick: float = field(
        default=1e-2, metadata={"help": "uniform L2 at which the filters are picked", **_SPARSIFY}
    )
    reg_granularity_recover: float = field(
        default=-1e-4,
        metadata={"help": "L2 factor of the kept filters after the pick (< 0: anti-decay)", **_SPARSIFY},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("reg_granularity_pick", self.reg_granularity_pick)
        _positive("reg_upper_limit_pick", self.reg_upper_limit_pick)
        if self.reg_upper_limit_pick >= self.reg_upper_limit:
            raise ConfigError(
                f"reg_upper_limit_pick ({self.reg_upper_limit_pick:g}) must be below reg_upper_limit "
                f"({self.reg_upper_limit:g})"
            )


@dataclass
class Layer:
    """One layer that loses filters: its coupled group's index, its learnable-layer index in execution
    order (the zero-out order), the BatchNorm reading its output, and the removed filters."""

    name: str
    group: int
    index: int
    bn: str | None
    removed: Tensor  # bool over output filters (CPU); copies per device in `_masks`


def _execution_order(model: nn.Module, example: Tensor) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    probe(
        model,
        example,
        [
            m.register_forward_hook(lambda mod, _i, _o: order.append(names[mod]))
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ],
    )
    return list(dict.fromkeys(order))


class RegularisedPruning(ScoringMethod):
    """Shared machinery: selection, picks, the λ clock, the removal. Subclasses give the penalty."""

    options: RegOptions
    supports_depth = False  # the picks are made before the regulariser trains; none may empty a branch
    #: ``min(⌈PR·N⌉, ⌊cap·N⌋)``; None: GReg's N − 1.
    cap: ClassVar[float | None] = None
    #: TPP's released λ (Δ·t/K_u, ends at ≥ τ) rather than GReg's increments (ends at > τ).
    released_ramp: ClassVar[bool] = False
    # The stage's length comes from `sparsify_steps`; one epoch here only says "there is a sparsify stage".
    schedule = Schedule(
        sparsify_epochs=1,
        finetune_epochs=120,
        sparsify={"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "schedule": "constant"},
    )
    demo = None

    def __init__(self, options: Any = None, selection: Selection | None = None) -> None:
        super().__init__(options, selection)
        self.layers: list[Layer] = []
        self.removed: list[list[int] | None] = []  # per group, None until picked (GReg-2)
        self.n_removed: list[int] = []  # per group: how many filters go
        self.group_members: list[tuple[str, ...]] = []
        self.clock: Clock | None = None
        self.steps_taken = 0
        self._example: Tensor | None = None
        self._masks: dict[tuple[str, torch.device], tuple[Tensor, Tensor]] = {}

    def resolve_selection(self, selection: Selection | None) -> Selection:
        return unwrapped(super().resolve_selection(selection))

    # ------------------------------------------------------------ schedule

    def ramp(self) -> Ramp:
        o = self.options
        if self.released_ramp and not o.stop_on_mag_ratio:
            return Ramp(o.reg_granularity, o.reg_upper_limit)
        return Ramp(o.reg_granularity, o.reg_upper_limit, first=o.reg_granularity, strict=True)

    def growth_end(self) -> int:
        """t_stab when no magnitude-ratio stop fires."""
        return growth_iterations(self.ramp(), self.options.update_reg_interval)

    def sparsify_steps(self, steps_per_epoch: int) -> int:
        """The whole stage: growth, then K_s steps held. With the magnitude-ratio stop growth may end sooner;
        the stage keeps this length and the hold absorbs the difference."""
        return stage_steps(self.growth_end(), self.options.stabilize_reg_interval)

    # ------------------------------------------------------------ prepare: allocation and picks

    def prepare(self, model: nn.Module, calib: Calib | None) -> None:
        example = example_input(calib, self.name)
        self._example = example
        groups = prunable_groups(model, example)
        alloc = allocate(
            model, example, groups, self.selection, parse_skip(self.options.skip_layers), self.cap
        )
        self.budget = alloc.budget
        bn = batchnorm_after(model, example)
        order = _execution_order(model, example)
        self.group_members, self.layers, self.removed = [], [], []
        for group, n_removed in zip(alloc.groups, alloc.removed, strict=True):
            if n_removed == 0:
                continue
            g = len(self.group_members)
            self.group_members.append(group.members)
            self.layers += [
                Layer(
                    name,
                    g,
                    order.index(name),
                    bn.get(name),
                    torch.zeros(group.out_channels, dtype=torch.bool),
                )
                for name in group.members
            ]
            self.removed.append(None)
        self.n_removed = [n for n in alloc.removed if n]
        self._masks = {}
        self.check_schedule(model)
        self.start(model)

    def check_schedule(self, model: nn.Module) -> None:
        """Refuse a schedule the method cannot run, before any training."""

    def start(self, model: nn.Module) -> None:
        """Picks on the dense weights and the update of iteration 0."""
        self.pick_all(model)
        self.clock = Clock(self.ramp(), self.options.update_reg_interval, len(self.group_members))
        self.steps_taken = 0
        self.update(model, 0)

    def pick_all(self, model: nn.Module) -> None:
        generator = torch.Generator().manual_seed(self.options.seed)
        for g, members in enumerate(self.group_members):
            removed = pick(filter_scores(model, members), self.n_removed[g], self.options.pick, generator)
            self.removed[g] = removed
            for layer in self.layers:
                if layer.group == g:
                    layer.removed = torch.zeros_like(layer.removed)
                    layer.removed[removed] = True
        self._masks = {}

    @property
    def picked(self) -> bool:
        return bool(self.removed) and all(r is not None for r in self.removed)

    def _require_prepared(self) -> None:
        if self.clock is None:
            raise ConfigError(
                f"{self.name}: prepare(model, calib) must run before the sparsify stage (it picks the "
                "filters on the dense weights); prunekit's pipeline does this"
            )

    def masks(self, layer: Layer, device: torch.device) -> tuple[Tensor, Tensor]:
        """(removed as bool, removed as float) on `device`, made once per device."""
        key = (layer.name, device)
        if key not in self._masks:
            removed = layer.removed.to(device)
            self._masks[key] = (removed, removed.float())
        return self._masks[key]

    # ------------------------------------------------------------ the stage's steps

    def magnitudes(self, model: nn.Module) -> Tensor:
        """Per group, (mean|w| of the kept filters, mean|w| of the removed ones): a (groups, 2) tensor."""
        rows = []
        with torch.no_grad():
            for g, members in enumerate(self.group_members):
                scores = sum(model.get_submodule(m).weight.detach().flatten(1).abs().mean(1) for m in members)
                layer = next(layer for layer in self.layers if layer.group == g)
                mask = self.masks(layer, scores.device)[0]
                rows.append(torch.stack([scores[~mask].mean(), scores[mask].mean()]))
        return torch.stack(rows).float().cpu() if rows else torch.zeros(0, 2)

    def magnitude_ratios(self, model: nn.Module) -> list[float]:
        """Per group, mean|w| kept over mean|w| removed (one host sync)."""
        m = self.magnitudes(model)
        return (m[:, 0] / m[:, 1].clamp_min(1e-30)).tolist()

    def update(self, model: nn.Module, t: int) -> None:
        assert self.clock is not None
        if not self.clock.due(t):
            return
        o = self.options
        ratios = self.magnitude_ratios(model) if o.stop_on_mag_ratio else None
        self.clock.update(t, ratios, o.mag_ratio_limit, together=True)

    def after_step(self, model: nn.Module, step: int) -> None:
        self._require_prepared()
        self.steps_taken = step
        self.hold_step(model, step - 1)
        self.update(model, step)

    def hold_step(self, model: nn.Module, t: int) -> None:
        """After the optimiser step of iteration `t` (TPP zeroes here)."""

    # ------------------------------------------------------------ checkpoint (train.hooks)

    def _clocks(self) -> dict[str, Clock]:
        return {n: c for n in ("clock", "pick_clock") if (c := getattr(self, n, None)) is not None}

    def hook_state(self) -> dict[str, Any]:
        """What the sparsify stage cannot recompute from the weights: the steps taken, every λ clock (update
        counts, stops, magnitude EMAs, t_stab) and the picks (GReg-2 picks during the stage)."""
        self._require_prepared()
        return {
            "steps_taken": self.steps_taken,
            "removed": [None if r is None else [int(i) for i in r] for r in self.removed],
            "clocks": {
                name: {"counts": c.counts, "stopped": c.stopped, "ema": c.ema, "t_stab": c.t_stab}
                for name, c in self._clocks().items()
            },
        }

    def load_hook_state(self, state: dict[str, Any]) -> None:
        """Continue from `hook_state` (a resumed run); `prepare` has made the same groups on the same dense
        weights, so anything that does not fit means the checkpoint belongs to another configuration."""
        self._require_prepared()
        clocks = self._clocks()
        removed = state["removed"]
        if len(removed) != len(self.group_members) or set(state["clocks"]) != set(clocks):
            raise CheckpointError(
                f"{self.name}: the sparsify checkpoint was written for {len(removed)} pruned groups, this "
                f"run has {len(self.group_members)}; it belongs to another configuration: restart the run"
            )
        for name, saved in state["clocks"].items():
            clock = clocks[name]
            clock.counts, clock.stopped = list(saved["counts"]), list(saved["stopped"])
            clock.ema, clock.t_stab = list(saved["ema"]), saved["t_stab"]
        self.removed = [None if r is None else list(r) for r in removed]
        for layer in self.layers:
            layer.removed = torch.zeros_like(layer.removed)
            if self.removed[layer.group] is not None:
                layer.removed[self.removed[layer.group]] = True
        self._masks = {}
        self.steps_taken = int(state["steps_taken"])

    def lam(self, g: int = 0) -> float:
        assert self.clock is not None
        return self.clock.lam(g)

    # ------------------------------------------------------------ removal

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        if self.clock is None:
            self.prepare(model, calib)
        if not self.picked:
            self.pick_all(model)
        plan: Plan = {}
        for g, members in enumerate(self.group_members):
            removed = set(self.removed[g] or ())
            width = len(next(layer.removed for layer in self.layers if layer.group == g))
            plan.update(dict.fromkeys(members, [i for i in range(width) if i not in removed]))
        return plan

    def prune(self, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
        plan = self.plan(model, calib)
        if self.steps_taken == 0:
            warnings.warn(
                f"{self.name} removed its filters without the regularised stage (no sparsify step ran): "
                "this is one-shot mean-|w| pruning; give the run its sparsify stage (--sparsify-epochs auto: "
                f"{self.name} sets its length, {self.sparsify_steps(1):,} steps)",
                stacklevel=2,
            )
        magnitudes = self.magnitudes(model).tolist()
        details = {
            "sparsify_steps_run": self.steps_taken,
            "sparsify_steps_declared": self.sparsify_steps(1),
            "t_stab": self.clock.t_stab if self.clock else None,
            "final_lambda": self.lam(0) if self.clock and self.group_members else None,
            "removed": {members[0]: self.removed[g] for g, members in enumerate(self.group_members)},
            # How far the penalty pushed, per coupled group right before removal (0 once zeroed).
            "mean_abs_w": {
                members[0]: {"kept": kept, "removed": removed}
                for members, (kept, removed) in zip(self.group_members, magnitudes, strict=True)
            },
        }
        assert self._example is not None
        return Pruned(apply(model, plan, self._example), details=details, budget=self.budget)

    def score(self, model: nn.Module, layer: str, calib: Calib | None) -> Tensor:
        return filter_scores(model, [layer])


@register_method
class TPP(RegularisedPruning):
    """TPP: growing gram-matrix, BN and L2 penalties on chosen filters, then removal (Wang & Fu, 2023)."""

    name = "tpp"
    Options = TPPOptions
    options: TPPOptions
    step_options = {
        "reg_granularity": "increment",
        "stabilize_reg_interval": "interval",
        "zero_out_interval": "interval",
    }
    cap = 0.995
    released_ramp = True

    def check_schedule(self, model: nn.Module) -> None:
        o = self.options
        n_layers = len(learnable_layers(model))
        if o.zero_out and o.stabilize_reg_interval < o.zero_out_interval * n_layers:
            raise ConfigError(
                f"stabilize_reg_interval {o.stabilize_reg_interval} is shorter than the layer-wise zero-out "
                f"({o.zero_out_interval} steps × {n_layers} conv/linear layers = "
                f"{o.zero_out_interval * n_layers}); raise it, lower zero_out_interval, or set zero_out=false"
            )

    def penalty(self, model: nn.Module, step: int = 0) -> Tensor | None:
        self._require_prepared()
        lam = self.lam(0)
        if lam == 0:
            return None
        o = self.options
        gram: Tensor | None = None
        l2: Tensor | None = None
        for layer in self.layers:
            module = model.get_submodule(layer.name)
            removed, coef = self.masks(layer, module.weight.device)
            term = regularizers.gram_term(module.weight, removed)
            gram = term if gram is None else gram + term
            parts = []
            if o.l2_reg:
                parts.append(regularizers.filter_l2(module.weight, coef))
                if getattr(module, "bias", None) is not None:
                    parts.append(regularizers.entry_l2(module.bias, coef))
            if o.bn_reg and layer.bn is not None:
                bn = model.get_submodule(layer.bn)
                if bn.weight is not None:
                    parts += [regularizers.entry_l2(bn.weight, coef), regularizers.entry_l2(bn.bias, coef)]
            for part in parts:
                l2 = part if l2 is None else l2 + part
        assert gram is not None
        total = o.lw_opp * lam * gram
        return total if l2 is None else total + lam * l2

    def hold_step(self, model: nn.Module, t: int) -> None:
        o = self.options
        assert self.clock is not None
        t_stab = self.clock.t_stab
        if not o.zero_out or t_stab is None or t < t_stab:
            return
        with torch.no_grad():
            for layer in self.layers:
                if t - t_stab < (layer.index + 1) * o.zero_out_interval:
                    continue
                module = model.get_submodule(layer.name)
                removed = self.masks(layer, module.weight.device)[0]
                module.weight[removed] = 0
                bn = model.get_submodule(layer.bn) if layer.bn is not None else None
                if bn is not None and bn.weight is not None:
                    bn.weight[removed] = 0
                    bn.bias[removed] = 0
                elif getattr(module, "bias", None) is not None:
                    # The release's models all have a BN after each pruned conv and leave the bias alone;
                    # without one, the bias would keep the channel alive as a constant and removal would
                    # change the network, so it is zeroed too.
                    module.bias[removed] = 0


@register_method
class GReg1(RegularisedPruning):
    """GReg-1: a growing L2 penalty on filters chosen up front, then removal (Wang et al., ICLR 2021)."""

    name = "greg1"
    Options = GReg1Options
    step_options = {"reg_granularity": "increment", "stabilize_reg_interval": "interval"}
    options: GReg1Options

    def penalty(self, model: nn.Module, step: int = 0) -> Tensor | None:
        self._require_prepared()
        total: Tensor | None = None
        for layer in self.layers:
            module = model.get_submodule(layer.name)
            coef = self.coefficients(layer, module.weight.device)
            if coef is None:
                continue
            term = regularizers.filter_l2(module.weight, coef)
            total = term if total is None else total + term
        return total

    def coefficients(self, layer: Layer, device: torch.device) -> Tensor | None:
        """Per-filter L2 factor of `layer` now (GReg's R, one value per filter); None when all zero."""
        lam = self.lam(layer.group)
        return None if lam == 0 else lam * self.masks(layer, device)[1]


@register_method
class GReg2(GReg1):
    """GReg-2: a uniform growing L2 first, filters picked on the weights it leaves, then GReg-1's growth."""

    name = "greg2"
    Options = GReg2Options
    step_options = {
        "reg_granularity": "increment",
        "reg_granularity_pick": "increment",
        "stabilize_reg_interval": "interval",
    }
    options: GReg2Options

    def pick_ramp(self) -> Ramp:
        o = self.options
        return Ramp(o.reg_granularity_pick, o.reg_upper_limit_pick, first=o.reg_granularity_pick)

    def ramp(self) -> Ramp:
        # After the pick, R of the removed filters continues from the pick's value, ending above τ.
        o = self.options
        start = self.pick_ramp().value(self.pick_ramp().updates())
        return Ramp(o.reg_granularity, o.reg_upper_limit, first=start + o.reg_granularity, strict=True)

    def growth_end(self) -> int:
        return (self.pick_ramp().updates() - 1 + self.ramp().updates()) * self.options.update_reg_interval

    def start(self, model: nn.Module) -> None:
        self.pick_clock = Clock(self.pick_ramp(), self.options.update_reg_interval, 1)
        self.clock = Clock(self.ramp(), self.options.update_reg_interval, len(self.group_members))
        self.steps_taken = 0
        self.update(model, 0)

    def update(self, model: nn.Module, t: int) -> None:
        if self.picked:
            o = self.options
            if self.clock is not None and self.clock.due(t):
                ratios = self.magnitude_ratios(model) if o.stop_on_mag_ratio else None
                self.clock.update(t, ratios, o.mag_ratio_limit, together=False)
            return
        if self.pick_clock.due(t):
            self.pick_clock.update(t)
            if self.pick_clock.t_stab is not None:
                self.pick_all(model)

    def coefficients(self, layer: Layer, device: torch.device) -> Tensor | None:
        assert self.clock is not None
        if not self.picked:
            value = self.pick_clock.lam(0)
            return None if value == 0 else torch.full_like(self.masks(layer, device)[1], value)
        pick_value = self.pick_ramp().value(self.pick_ramp().updates())
        lam = pick_value + self.options.reg_granularity * self.clock.counts[layer.group]
        removed = self.masks(layer, device)[1]
        return lam * removed + self.options.reg_granularity_recover * (1 - removed)

    def lam(self, g: int = 0) -> float:
        assert self.clock is not None
        if not self.picked:
            return self.pick_clock.lam(0)
        return (
            self.pick_ramp().value(self.pick_ramp().updates())
            + self.options.reg_granularity * self.clock.counts[g]
        )
