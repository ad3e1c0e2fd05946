"""DeepHoyer (Yang, Wen, Li, ICLR 2020): a sparsity regulariser, then one threshold, then masked fine-tuning.

Sparsify: loss += decay · Σ_tensors R(W) with R from `methods.regularizers` (one term per tensor, summed,
no per-layer weights). The tensors are the conv and linear weights, plus their biases for the element-wise
regularisers as in the MNIST release (``include_biases``); the group regularisers act on weights only.

Prune: zero every element with ``|w| < t`` (strict), either a fixed ``t = sensitivity`` or, per tensor,
``t = sensitivity · std(w)`` with the population std over all its elements (the MNIST ``prun_tune_V``).
The same tensors as the regulariser are pruned. Element-wise, the result is a `MaskSet` to fine-tune
under `surgery.masks.attach`. With ``structural=True`` every output channel whose filter (row) fell
entirely to zero, or whose every consumer's input channel (column) did, is removed physically through
`surgery.apply`: the release only zeroes elements and reads structure off afterwards, but a dead channel
computes nothing the network uses, so removing it changes no output (this is checked on the calibration
batch). A filter whose weights died but whose bias did not outputs a constant; `fold_constants` removes it
too and moves the constant into the consumer's bias wherever that is exact (`surgery.constants`). The
zeros that remain stay as masks.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

import prunekit.methods.deephoyer.regularizers as regularizers
from prunekit.errors import ConfigError, unknown_name
from prunekit.methods.base import (
    BudgetKind,
    Calib,
    ChannelKeep,
    Method,
    Plan,
    Pruned,
    Schedule,
    example_input,
    register_method,
)
from prunekit.surgery.channels import apply
from prunekit.surgery.constants import fold_constant_channels
from prunekit.surgery.dead_channels import zero_channel_plan
from prunekit.surgery.equivalence import check_same_outputs
from prunekit.surgery.masks import MaskSet, fold

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage

THRESHOLD_RULES = ("fixed", "std")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class DeepHoyerOptions:
    """`decay` multiplies the summed regulariser. `include_biases=None` follows the release: biases are
    regularised and pruned with the element-wise regularisers (MNIST), never with the group ones."""

    regularizer: str = field(
        default="hoyer_square",
        metadata={"help": "l1, hoyer, hoyer_square, transformed_l1, group_lasso, group_hs"},
    )
    decay: float = field(
        default=1e-4, metadata={"help": "weight of the summed regulariser", "effect": "sparsify"}
    )
    tl1_a: float = field(
        default=1.0, metadata={"help": "the a of transformed L1 (the release fixes 1)", "effect": "sparsify"}
    )
    include_biases: bool | None = field(
        default=None, metadata={"help": "regularise biases too (unset: with element-wise regularisers)"}
    )
    threshold: str = field(
        default="std",
        metadata={"help": "fixed: |w| < sensitivity; std: |w| < sensitivity * std(w) per tensor"},
    )
    sensitivity: float = field(
        default=0.25, metadata={"help": "threshold scale (release: 0.25 std, 1e-3 fixed); the budget knob"}
    )
    structural: bool = field(
        default=False, metadata={"help": "remove dead filters/channels physically after thresholding"}
    )
    # The MNIST release thresholds every tensor, biases included, whatever the regulariser; with group
    # regularisers that is what lets a filter whose weights died disappear instead of surviving as a
    # constant ReLU(bias) map.
    prune_biases: bool | None = field(
        default=None, metadata={"help": "threshold biases too (unset: exactly when they are regularised)"}
    )
    reproduce_grouping_bug: bool = field(
        default=False,
        metadata={"help": "the release's dims-0/1 'fibre' groups (group regularisers)", "effect": "sparsify"},
    )
    # Folding is exact only where the constant reaches the consumer unchanged (`surgery.constants`).
    fold_constants: bool = field(
        default=True,
        metadata={"help": "structural: also remove constant-output filters (folded)", "effect": "data"},
    )

    def __post_init__(self) -> None:
        if self.regularizer not in regularizers.REGULARIZERS:
            raise unknown_name("regularizer", self.regularizer, regularizers.REGULARIZERS)
        if self.threshold not in THRESHOLD_RULES:
            raise unknown_name("threshold rule", self.threshold, THRESHOLD_RULES)
        if not self.decay >= 0:
            raise ConfigError(f"deephoyer decay must be >= 0, got {self.decay:g}")
        if not self.sensitivity >= 0:
            raise ConfigError(f"deephoyer sensitivity must be >= 0, got {self.sensitivity:g}")
        if not self.tl1_a > 0:
            raise ConfigError(f"deephoyer tl1_a must be > 0, got {self.tl1_a:g}")
        if self.tl1_a != 1.0 and self.regularizer != "transformed_l1":
            raise ConfigError(
                f"tl1_a is the a of regularizer 'transformed_l1'; {self.regularizer!r} has none"
            )
        if self.reproduce_grouping_bug and not self.grouped:
            raise ConfigError(
                "reproduce_grouping_bug changes the groups of group regularisers; "
                f"{self.regularizer!r} has none"
            )
        if not self.structural and not self.fold_constants:
            raise ConfigError("fold_constants acts on the structural mode only; set structural=true")
        if self.include_biases and self.grouped:
            raise ConfigError(
                f"regularizer {self.regularizer!r} acts on filter/channel groups of weight tensors; biases "
                "have no such groups: set include_biases to false (or leave it unset)"
            )

    @property
    def grouped(self) -> bool:
        return self.regularizer in regularizers.GROUPED

    @property
    def biases(self) -> bool:
        return not self.grouped if self.include_biases is None else self.include_biases


@dataclass
class PruneResult(Pruned):
    """`Pruned`, plus the per-tensor thresholds used and the channel plan that was removed physically
    (empty unless structural)."""

    thresholds: dict[str, float] = field(default_factory=dict)
    plan: ChannelKeep = field(default_factory=dict)


@register_method
class DeepHoyer(Method):
    """DeepHoyer: Hoyer-type sparsity regularisers, then a threshold (Yang, Wen, Li, ICLR 2020).

    The budget knob is the threshold's `sensitivity`: in the structural mode a MAC budget
    (``target_macs``) moves it until enough filters die, element-wise a ``target_density`` does.
    """

    name = "deephoyer"
    Options: ClassVar[type] = DeepHoyerOptions
    options: DeepHoyerOptions
    knob = "sensitivity"
    knob_range = (0.0, 10.0)
    # `prunekit compare` budgets MACs: the structural Group-HS form is the one that removes channels.
    schedule = Schedule(
        sparsify_epochs=20,
        finetune_epochs=10,
        options={"regularizer": "group_hs", "structural": True},
        label="group-HS",
    )
    # decay/sensitivity tuned for three regularised epochs of LeNet-5, not the paper's schedule.
    demo = Schedule(
        sparsify_epochs=3,
        finetune_epochs=3,
        sparsify={"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0},
        options={"regularizer": "group_hs", "decay": 0.01, "sensitivity": 0.8, "structural": True},
        label="group-HS",
    )

    def budget_kind(self) -> BudgetKind:
        return "macs" if self.options.structural else "density"

    def tensors(self, model: nn.Module, *, for_pruning: bool = False) -> dict[str, nn.Parameter]:
        """The parameters regularised (or, `for_pruning`, thresholded): conv/linear weights, plus biases
        when `options.biases` (`options.prune_biases` for pruning, defaulting to the same)."""
        with_biases = self.options.biases
        if for_pruning and self.options.prune_biases is not None:
            with_biases = self.options.prune_biases
        chosen: dict[str, nn.Parameter] = {}
        for prefix, module in model.named_modules():
            if not isinstance(module, _LAYERS):
                continue
            for attr in ("weight", "bias") if with_biases else ("weight",):
                param = getattr(module, attr)
                if param is not None:
                    chosen[f"{prefix}.{attr}" if prefix else attr] = param
        if not chosen:
            raise ConfigError("deephoyer found no conv or linear layer to regularise")
        return chosen

    def penalty(self, model: nn.Module, step: int = 0) -> Tensor | None:
        opts = self.options
        if opts.decay == 0:
            return None
        reg = regularizers.total(
            self.tensors(model).values(), opts.regularizer, a=opts.tl1_a, fibre=opts.reproduce_grouping_bug
        )
        return opts.decay * reg

    def thresholds(self, model: nn.Module) -> dict[str, float]:
        """Per pruned tensor, the t of ``|w| < t``."""
        opts = self.options
        if opts.threshold == "fixed":
            return dict.fromkeys(self.tensors(model, for_pruning=True), opts.sensitivity)
        tensors = self.tensors(model, for_pruning=True)
        # One device→host transfer for all tensors instead of one per tensor.
        stds = torch.stack([w.detach().float().std(correction=0) for w in tensors.values()])
        return dict(zip(tensors, (opts.sensitivity * stds).tolist(), strict=True))

    def masks(self, model: nn.Module, thresholds: Mapping[str, float] | None = None) -> MaskSet:
        """Element-wise keep masks; refuses a threshold that prunes every weight of a layer."""
        thresholds = dict(self.thresholds(model) if thresholds is None else thresholds)
        masks = MaskSet.from_threshold(model, thresholds)
        named = dict(model.named_parameters())
        # An all-zero bias disconnects nothing; an all-zero weight matrix does.
        emptied = [name for name, mask in masks.items() if named[name].dim() >= 2 and not mask.any()]
        if emptied:
            name = emptied[0]
            largest = float(named[name].detach().abs().max())
            raise ConfigError(
                f"the {self.options.threshold} threshold {thresholds[name]:.4g} (sensitivity "
                f"{self.options.sensitivity:g}) prunes every weight of layer {name.rsplit('.', 1)[0]!r} "
                f"(largest |w| = {largest:.4g}), which disconnects the network; lower the sensitivity"
            )
        return masks

    def plan(self, model: nn.Module, calib: Calib | None) -> Plan:
        """The channels the structural mode keeps, indexed in the thresholded model (`prune` applies them
        to it; on the unthresholded `model` the removed ones are only near-zero). Empty element-wise. The
        folded constant channels also changed their consumers' biases, so the pruned network is
        `prune(...).model`, not `apply(model, plan)`."""
        return self.prune(model, calib).plan

    def prune(self, model: nn.Module, calib: Calib | None = None, stage: Stage | None = None) -> PruneResult:
        """Threshold a copy of `model`; with `options.structural`, also remove its dead channels (needs
        `calib`, whose first samples trace the model and check the removal changed no output)."""
        thresholds = self.thresholds(model)
        masks = self.masks(model, thresholds)
        masked = fold(copy.deepcopy(model), masks)
        details = {"thresholds": thresholds}
        if not self.options.structural:
            return PruneResult(masked, masks, details, thresholds=thresholds)
        example = example_input(calib, self.name)
        checks = calib[:16] if calib is not None else example
        plan = zero_channel_plan(masked, example)
        smaller = masked
        if plan:
            smaller = apply(masked, plan, example)
            check_same_outputs(
                masked,
                smaller,
                checks,
                what=f"removing the dead channels of {', '.join(sorted(plan))}",
                hint="an activation that does not map 0 to 0 probably follows one of them, so prune "
                "element-wise (structural=false) instead",
            )
        if self.options.fold_constants and len(checks) > 1:
            smaller, folded = fold_constant_channels(smaller, checks)
            plan = _compose(plan, folded)
        if not plan:
            return PruneResult(masked, masks, details, thresholds=thresholds)
        # Surgery keeps parameter names, so the masks of the smaller model are its surviving zeros.
        remaining = MaskSet.from_zeros(smaller, params=list(masks))
        return PruneResult(smaller, remaining, details, thresholds=thresholds, plan=plan)


def _compose(first: ChannelKeep, then: Mapping[str, Sequence[int]]) -> ChannelKeep:
    """The kept channels of `then` (indices after `first`) as indices before `first`."""
    plan = dict(first)
    for name, kept in then.items():
        before = list(first[name]) if name in first else None
        plan[name] = [before[k] for k in kept] if before is not None else list(kept)
    return plan
