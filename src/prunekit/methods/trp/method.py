"""TRP (Xu et al., IJCAI 2020) and its nuclear-norm-only baseline (specs/trp.md).

Training (the sparsify stage, hooks of `train/hooks.py`); step s counts optimiser steps from 1 over the
whole run, and the TRP steps are s = 1, 1+m, 1+2m, ... (the release's batch 0, m, 2m, ...; it restarts
its counter every epoch, we do not):

- ``trp``: after every m-th optimiser step each trained conv weight is overwritten in place by its
  truncated SVD (energy rule, no gradient through the SVD), so the next step, a TRP step, runs forward and
  backward on the low-rank weight; at TRP steps λ·U_r V_rᵀ (the nuclear-norm sub-gradient of that
  rank-r weight, from the same SVD) is added to the weight gradient before the optimiser step.
- ``nuclear``: the sub-gradient only (the release's ``--nuclear-weight`` without ``--trp``): λ·U_r V_rᵀ
  of the un-projected weight, r from the same energy rule.

Prune: each decomposed conv becomes a `LowRankConv2d` (NC or VH) through a `LowRankPlan`, the rank from
the singular-value threshold (``rule="value"``, the release's final rule for TRP-trained nets) or the
discarded-energy share (``rule="energy"``). The rule's `threshold` is the budget knob: larger removes
more under both rules. A layer whose factorised form would not cost fewer MACs than the conv stays dense
and is reported in the summary (``summary["trp"]["left_dense"]``).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods.base import Calib, Method, Plan, Pruned, Schedule, example_input, register_method
from prunekit.methods.selection import Selection
from prunekit.methods.trp.projection import Projection, energy_ranks, project, value_ranks
from prunekit.models.probe import probe
from prunekit.surgery.lowrank import _by_shape, full_rank, lowrank_macs, to_matrix
from prunekit.surgery.plan import LowRankPlan

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage


@dataclass
class TRPOptions:
    """Options of `trp` and `nuclear`. `energy`, `period` and `nuclear_weight` act while training only."""

    scheme: Literal["NC", "VH", "ND"] = field(
        default="NC",
        metadata={
            "help": "NC: channel-wise (c->r kxk, r->n 1x1); VH: spatial (kx1, 1xk); ND: network decoupling "
            "(per filter: r pointwise+depthwise paths; the release ends it with rule=energy threshold=0.15)"
        },
    )
    rule: Literal["value", "energy"] = field(
        default="value",
        metadata={"help": "final rank rule: value (keep sigma >= threshold) or energy (discard share)"},
    )
    threshold: float = field(
        default=0.05,
        metadata={
            "help": "value: singular-value threshold (release 0.05); energy: discarded sigma^2 share e "
            "(keep >= 1-e); the budget knob"
        },
    )
    energy: float = field(
        default=0.9,
        metadata={
            "help": "sigma^2 share kept by the training projection (release 0.9, paper 0.98), in (0, 1]",
            "effect": "train",
        },
    )
    period: int = field(
        default=1, metadata={"help": "m: project / add the sub-gradient every m steps", "effect": "train"}
    )
    nuclear_weight: float = field(
        default=3e-4,
        metadata={"help": "lambda of the nuclear-norm sub-gradient (0: none)", "effect": "train"},
    )
    layers: str = field(
        default="",
        metadata={"help": "comma-separated conv globs; empty: every non-1x1 conv except the first (spec §1)"},
    )
    include_1x1: bool = field(
        default=False, metadata={"help": "the default layer rule also takes 1x1 convs (paper ResNet-56)"}
    )
    decompose_strided: bool = field(
        default=False,
        metadata={"help": "also decompose strided convs (the release trains them low-rank but keeps them)"},
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ConfigError(
                f"trp energy must be in (0, 1] (the sigma^2 share the projection keeps), got {self.energy:g}"
            )
        if self.rule == "energy" and not 0.0 <= self.threshold < 1.0:
            raise ConfigError(
                f"with rule=energy the threshold is the discarded sigma^2 share e, in [0, 1) (the kept "
                f"energy 1-e must be in (0, 1]); got {self.threshold:g}"
            )
        if not self.threshold >= 0:
            raise ConfigError(f"trp threshold must be >= 0, got {self.threshold:g}")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ConfigError(f"trp period must be an integer >= 1, got {self.period!r}")
        if not self.nuclear_weight >= 0:
            raise ConfigError(f"trp nuclear_weight must be >= 0, got {self.nuclear_weight:g}")
        self.patterns = [p.strip() for p in self.layers.split(",")] if self.layers.strip() else []
        if self.layers.strip() and not all(self.patterns):
            raise ConfigError(f"trp layers {self.layers!r} has an empty pattern")
        if self.patterns and self.include_1x1:
            raise ConfigError(
                "include_1x1 extends the default layer rule; with `layers` globs name the 1x1 convs"
            )


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    # Exactly nn.Conv2d: a LowRankConv2d's factors (already decomposed) are not taken again.
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Conv2d and not name.endswith((".first", ".second"))
    ]


@register_method
class TRP(Method):
    """TRP (Xu et al., IJCAI 2020): truncated-SVD projection + nuclear sub-gradient, then low-rank convs."""

    name = "trp"
    Options: ClassVar[type] = TRPOptions
    options: TRPOptions
    knob = "threshold"
    knob_range = (0.0, 1000.0)
    #: Whether training projects the weights (False: the nuclear-norm-only baseline).
    projects: ClassVar[bool] = True
    # The release trains 164 epochs with TRP from scratch (recipes/trp/); a comparison run trains a
    # trained net 20 more, and the decomposition is used without fine-tuning, as the paper reports it.
    schedule = Schedule(sparsify_epochs=20, finetune_epochs=0)
    #: Options under which one-shot pruning of an untrained network decomposes something: the value rule's
    #: 0.05 assumes TRP-trained weights, whose tail singular values are near zero (conformance test).
    conformance_options: ClassVar[dict[str, Any]] = {"rule": "energy", "threshold": 0.2}

    def __init__(self, options: Any = None, selection: Selection | None = None) -> None:
        super().__init__(options, selection)
        if self.options.rule == "energy":
            self.knob_range = (0.0, 0.9999)
        self._layers_for: tuple[int, list[tuple[str, nn.Conv2d]]] | None = None
        self._subgradients: tuple[int, list[Tensor]] | None = None

    # ------------------------------------------------------------ layers

    def trained_layers(self, model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
        """The look-up table L (spec §1): the convs projected and regularised while training."""
        convs = _convs(model)
        if self.options.patterns:
            names = [name for name, _ in convs]
            for pattern in self.options.patterns:
                if not fnmatch.filter(names, pattern):
                    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                    raise ConfigError(
                        f"{self.name} layer pattern {pattern!r} matches no conv; convs are named like: "
                        f"{shown}"
                    )
            chosen = [
                (n, m) for n, m in convs if any(fnmatch.fnmatchcase(n, p) for p in self.options.patterns)
            ]
        else:
            spatial = [(n, m) for n, m in convs if m.kernel_size != (1, 1)]
            stem = spatial[0][0] if spatial else None
            if self.options.include_1x1:
                if len(spatial) == len(convs):
                    raise ConfigError(f"include_1x1: the model has no 1x1 conv ({self.name})")
                chosen = [(n, m) for n, m in convs if n != stem]
            else:
                chosen = [(n, m) for n, m in spatial if n != stem]
        grouped = [n for n, m in chosen if m.groups != 1]
        if grouped and self.options.patterns:
            raise ConfigError(f"{self.name}: grouped convs cannot be decomposed: {', '.join(grouped)}")
        chosen = [(n, m) for n, m in chosen if m.groups == 1]  # the default rule skips grouped convs
        if not chosen:
            raise ConfigError(f"{self.name}: no conv to decompose in this model")
        return chosen

    def decomposed_layers(self, model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
        """The convs the final decomposition may factorise: L without strided convs unless asked."""
        trained = self.trained_layers(model)
        if self.options.decompose_strided:
            if all(m.stride == (1, 1) for _, m in trained):
                raise ConfigError(f"decompose_strided: none of the selected convs is strided ({self.name})")
            return trained
        kept = [(n, m) for n, m in trained if m.stride == (1, 1)]
        if not kept:
            raise ConfigError(f"{self.name}: every selected conv is strided; set decompose_strided=true")
        return kept

    def _cached_layers(self, model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
        if self._layers_for is None or self._layers_for[0] != id(model):
            self._layers_for = (id(model), self.trained_layers(model))
        return self._layers_for[1]

    # ------------------------------------------------------------ training hooks

    def after_step(self, model: nn.Module, step: int) -> None:
        """After every m-th step: the weights the next (TRP) step uses become their truncated SVD."""
        if not self.projects or step % self.options.period:
            return
        convs = [m for _, m in self._cached_layers(model)]
        done = self._project(convs, step)
        if done is None:
            return
        with torch.no_grad():
            for conv, p in zip(convs, done, strict=True):
                conv.weight.copy_(p.weight)
        # The release takes the sub-gradient from this same SVD (U_r V_rᵀ of the projected weight).
        self._subgradients = (step, [p.subgradient for p in done])

    def after_backward(self, model: nn.Module, step: int) -> None:
        """At TRP steps: grad += λ·U_r V_rᵀ (before momentum and weight decay, as in the release)."""
        lam = self.options.nuclear_weight
        if lam == 0 or (step - 1) % self.options.period:
            return
        convs = [m for _, m in self._cached_layers(model)]
        cached = self._subgradients
        if cached is not None and cached[0] == step - 1:
            subgradients = cached[1]
        else:  # nuclear only, or the first step (no projection precedes it)
            done = self._project(convs, step)
            if done is None:
                return
            subgradients = [p.subgradient for p in done]
        self._subgradients = None
        with torch.no_grad():
            for conv, g in zip(convs, subgradients, strict=True):
                if conv.weight.grad is not None:  # `.to`: a resumed run's state comes back on the CPU
                    conv.weight.grad.add_(g.to(conv.weight.grad.device), alpha=lam)

    def hook_state(self) -> dict[str, Any]:
        """For the sparsify checkpoint (`train.hooks`): the sub-gradients the last projection left for the
        next TRP step, so a resumed stage takes them from that same SVD, as the uninterrupted one does."""
        if self._subgradients is None:
            return {"step": None, "subgradients": []}
        step, subgradients = self._subgradients
        return {"step": step, "subgradients": [g.detach().cpu() for g in subgradients]}

    def load_hook_state(self, state: dict[str, Any]) -> None:
        step, subgradients = state["step"], list(state["subgradients"])
        self._subgradients = None if step is None else (step, subgradients)

    def _project(self, convs: list[nn.Conv2d], step: int) -> list[Projection] | None:
        """The truncated SVDs of `convs`; None (the step is skipped, as the release does) when the SVD
        does not converge on finite weights. Non-finite weights mean training diverged: refused."""
        try:
            return project([m.weight for m in convs], self.options.scheme, self.options.energy)
        except torch.linalg.LinAlgError:
            if not all(torch.isfinite(m.weight).all() for m in convs):
                raise PrunekitError(
                    f"{self.name}: conv weights are not finite at step {step} (training diverged); "
                    "lower the learning rate or nuclear_weight"
                ) from None
            warnings.warn(f"{self.name}: the SVD did not converge at step {step}; step skipped", stacklevel=3)
            return None

    # ------------------------------------------------------------ decomposition

    def ranks(
        self, model: nn.Module, calib: Calib | None
    ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """(rank of each conv that is decomposed, {conv: rank, full rank and MACs} of those left dense
        because their factorised form would not be cheaper)."""
        example = example_input(calib, self.name)
        convs = self.decomposed_layers(model)
        scheme = self.options.scheme
        sigmas = _by_shape([to_matrix(m.weight, scheme) for _, m in convs], torch.linalg.svdvals)
        # Per conv one rank; ND rates each output filter and takes the largest (its common rank).
        if self.options.rule == "value":
            chosen = [int(value_ranks(s, self.options.threshold).max()) for s in sigmas]
        else:
            chosen = [int(energy_ranks(s, 1.0 - self.options.threshold).max()) for s in sigmas]
        sizes: dict[nn.Module, tuple[tuple[int, int], tuple[int, int]]] = {}

        def record(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            sizes[module] = (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))  # type: ignore[assignment]

        probe(model, example, [m.register_forward_hook(record) for _, m in convs])
        decomposed: dict[str, int] = {}
        dense: dict[str, dict[str, int]] = {}
        for (name, conv), rank in zip(convs, chosen, strict=True):
            if conv not in sizes:
                raise ConfigError(f"{self.name}: conv {name!r} is never called on the example input")
            in_hw, out_hw = sizes[conv]
            macs = conv.weight[0].numel() * conv.out_channels * out_hw[0] * out_hw[1]
            factorised = lowrank_macs(conv, scheme, rank, in_hw, out_hw)
            if factorised < macs:
                decomposed[name] = rank
            else:
                dense[name] = {
                    "rank": rank,
                    "full_rank": full_rank(conv, scheme),
                    "macs": macs,
                    "factorised_macs": factorised,
                }
        return decomposed, dense

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        decomposed, _ = self.ranks(model, calib)
        return LowRankPlan({name: (self.options.scheme, rank) for name, rank in decomposed.items()})

    def prune(self, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
        from prunekit.surgery import apply

        decomposed, dense = self.ranks(model, calib)
        plan = LowRankPlan({name: (self.options.scheme, rank) for name, rank in decomposed.items()})
        smaller = apply(model, plan, example_input(calib, self.name))
        modules = dict(model.named_modules())
        details = {
            "scheme": self.options.scheme,
            "rule": self.options.rule,
            "threshold": self.options.threshold,
            "ranks": decomposed,
            "full_ranks": {n: full_rank(modules[n], self.options.scheme) for n in decomposed},
            "left_dense": dense,
        }
        # The release decomposes a trained net and reports it as is ("no fine-tuning needed"); the run's
        # fine-tune stage still runs when asked (the paper's retrain rows).
        return Pruned(smaller, details=details, budget=getattr(self, "budget", None))


@dataclass
class NuclearOptions(TRPOptions):
    """The nuclear baseline's final rule defaults to the nuclear script's EnergyThreshold(0.85)
    (spec §5.2): its weights are not projected, so a fixed value threshold has no meaning for them."""

    rule: Literal["value", "energy"] = field(
        default="energy",
        metadata={"help": "final rank rule: value (keep sigma >= threshold) or energy (discard share)"},
    )
    threshold: float = field(
        default=0.15,
        metadata={
            "help": "energy: discarded sigma^2 share e (0.15 = the script's 0.85); value: sigma threshold; "
            "the budget knob"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nuclear_weight == 0:
            raise ConfigError("the nuclear baseline needs nuclear_weight > 0 (it is its only training term)")


@register_method
class Nuclear(TRP):
    """Nuclear-norm baseline of TRP: the sub-gradient only while training, then low-rank convs."""

    name = "nuclear"
    Options: ClassVar[type] = NuclearOptions
    projects = False
    # Its weights are not low-rank when decomposed: the paper's baselines are fine-tuned.
    schedule = Schedule(sparsify_epochs=20, finetune_epochs=10)
    conformance_options: ClassVar[dict[str, Any]] = {}
