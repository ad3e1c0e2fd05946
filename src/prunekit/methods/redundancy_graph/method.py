"""Redundancy-graph decomposition (Li, Shao, Deng, Jiang; Neurocomputing 2024): per conv, connect the
filters whose output maps hash alike (similarity ≥ τ), collapse the graph's densest cores to their
largest-L1 filter, and remove the rest (specs/redundancy_graph.md).

- **Evidence.** One calibration pass (`methods.feature_pass`) over `n_images` training images hashes the
  raw conv outputs (`feature_taps(model, "conv")`: before BN and ReLU) as they are produced and keeps only
  each layer's (C, C) Hamming sums. BatchNorm runs on the batch's own statistics by default, as the
  original never switched to eval mode (``batchnorm="eval"`` uses the running statistics).
- **Maps go to their own conv.** Hooks are matched by module identity. The original pairs the k-th hook
  call with the k-th registered conv, which in its ResNets (shortcut evaluated first) scores block 0 of
  stages 2 and 3 on the wrong layers' maps (spec §3.2). ``legacy_hook_order=True`` reproduces that
  pairing for exact reproduction only; on a model whose convs run in registration order (every zoo
  model) it would change nothing and is refused.
- **Coupled channels (spec §3).** Layers whose outputs are tied (a residual stage; groups come from the
  dependency graph, for zoo and user models alike) keep one channel set, decided by ONE graph: that of
  the group's first conv in execution order. The original takes a stage's set from one conv and prunes
  the blocks' last convs by it: the stem for stage 1 — our first member too — and the downsample conv
  for later stages, whose graph its hook rotation in fact built on block 0's conv2 maps; our first
  member of those stages is block 0's conv2 (the zoo has no shortcut conv or runs it after the branch).
  Concatenations (DenseNet, GoogLeNet) couple nothing: every conv gets its own graph and the surgery
  carries the index sets through the concat (the spec's running `in_set`).
- **Budget.** τ is global with optional per-layer overrides (`layer_tau`, globs, last match wins). Lower τ
  adds edges and removes more, so the budget search (`methods.budget.search_knob`, whose knob must never
  add cost as it grows) moves ``1 − τ``; the summary records the τ found. Overridden layers keep their τ.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.measure.cost import cost
from prunekit.methods.base import (
    Calib,
    LayerGroup,
    Method,
    Pruned,
    Schedule,
    example_input,
    layer_weight,
    prunable_groups,
    register_method,
)
from prunekit.methods.feature_pass import BatchNormMode, feature_pass, firing_order
from prunekit.methods.redundancy_graph.decomposition import kcore_collapse
from prunekit.methods.redundancy_graph.hashing import HammingAccumulator, edges, phash
from prunekit.models.taps import feature_taps

if TYPE_CHECKING:
    from prunekit.methods.stage import Stage

#: The original hashes the first 100 training images (spec §1.1).
DEFAULT_IMAGES = 100


def _check_tau(tau: float, where: str) -> None:
    if not 0.0 < tau <= 1.0:
        raise ConfigError(
            f"{where} must be in (0, 1], got {tau:g}: tau <= 0 would connect every pair of filters "
            "(lower tau removes more filters)"
        )


def parse_layer_tau(text: str) -> list[tuple[str, float]]:
    """``"layer3.*:0.75,conv1:0.8"`` → [(glob, τ), ...]; the last matching rule wins."""
    rules = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pattern, sep, value = part.rpartition(":")
        if not sep or not pattern.strip():
            raise ConfigError(f"layer_tau entry {part!r} must be GLOB:TAU, e.g. 'layer3.*:0.75'")
        try:
            tau = float(value)
        except ValueError:
            raise ConfigError(f"layer_tau entry {part!r}: {value!r} is not a number") from None
        _check_tau(tau, f"layer_tau for {pattern.strip()!r}")
        rules.append((pattern.strip(), tau))
    return rules


@dataclass
class RedundancyGraphOptions:
    tau: float = field(
        default=0.7,
        metadata={"help": "similarity threshold in (0, 1]: an edge where S >= tau; lower tau prunes more"},
    )
    layer_tau: str = field(
        default="",
        metadata={"help": "per-layer tau overrides 'glob:tau,...' (last match wins; kept under a budget)"},
    )
    n_images: int = field(default=DEFAULT_IMAGES, metadata={"help": "training images whose maps are hashed"})
    batchnorm: BatchNormMode = field(
        default="batch",
        metadata={"help": "BN during extraction: batch statistics (the original) or running (eval)"},
    )
    legacy_hook_order: bool = field(
        default=False,
        metadata={"help": "pair maps with convs by hook firing order, as the original (reproduction only)"},
    )

    def __post_init__(self) -> None:
        _check_tau(self.tau, "tau")
        self.rules = parse_layer_tau(self.layer_tau)
        if self.n_images < 1:
            raise ConfigError(f"n_images must be at least 1, got {self.n_images}")
        if self.batchnorm not in ("batch", "eval"):
            raise ConfigError(f"batchnorm must be 'batch' or 'eval', got {self.batchnorm!r}")


@dataclass(frozen=True)
class LayerEvidence:
    """What the calibration pass leaves for one graph: the similarity S (C, C) float64, the filters' L1
    norms (C,), and the hash size K² and images N that S averages over."""

    similarity: Tensor
    l1: Tensor
    bits: int
    images: int


@register_method
class RedundancyGraph(Method):
    """Redundancy graph: k-core collapse of per-conv feature-map hash similarity graphs (Li et al. 2024)."""

    name = "redundancy_graph"
    Options = RedundancyGraphOptions
    options: RedundancyGraphOptions
    knob = "1-tau"
    knob_range = (0.0, 1.0)
    schedule = Schedule(finetune_epochs=70)  # CIFAR, code version 2 (spec §5)

    def __init__(self, options: Any = None, selection: Any = None) -> None:
        super().__init__(options, selection)
        # Shared by the budget search's clones (copy.copy): the pass runs once per model and calibration.
        self._evidence: dict[str, Any] = {}

    def calib_images(self) -> int:
        return self.options.n_images

    def with_knob(self, value: float) -> Method:
        clone = copy.copy(self)
        clone.options = dataclasses.replace(self.options, tau=round(1.0 - value, 12))
        clone.selection = None
        return clone

    # ------------------------------------------------------------ evidence

    def prepare(self, model: nn.Module, calib: Calib | None) -> None:
        self.evidence(model, calib)

    def evidence(
        self, model: nn.Module, calib: Calib | None
    ) -> tuple[list[LayerGroup], dict[str, LayerEvidence]]:
        """Coupling groups and the evidence of each group's graph (computed once per model and calib)."""
        example = example_input(calib, self.name)
        assert calib is not None
        key = (id(model), calib.data_ptr(), tuple(calib.shape), self.options.batchnorm,
               self.options.legacy_hook_order, self.options.n_images)  # fmt: skip
        if self._evidence.get("key") == key:
            return self._evidence["groups"], self._evidence["layers"]
        groups = prunable_groups(model, example)
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        leaders = {leader for g in groups if (leader := _leader(g, model)) is not None}
        taps = feature_taps(model, "conv") or ()
        if self.options.legacy_hook_order:
            fired = firing_order(model, example, convs)
            if list(fired) == convs:
                raise ConfigError(
                    "legacy_hook_order reproduces the original's pairing of the k-th hook call with the "
                    "k-th registered conv, which misplaces maps only where convs run in another order "
                    "than registered; this model's convs run in registration order, so it would change "
                    "nothing: drop it"
                )
        else:
            taps = tuple(t for t in taps if t.conv in leaders)
        accumulators = {conv: HammingAccumulator() for conv in leaders}

        def reduce(names: tuple[str, ...], maps: Tensor) -> None:
            wanted = [n for n in names if n in accumulators]
            if wanted:
                bits = phash(maps)
                for name in wanted:
                    accumulators[name].add(bits)

        n_images = min(self.options.n_images, len(calib))
        if n_images < self.options.n_images:
            warnings.warn(
                f"redundancy_graph hashes {n_images} calibration images, fewer than "
                f"n_images={self.options.n_images}",
                stacklevel=3,
            )
        # Batch statistics are those of all the images at once, as in the original's single forward.
        batch_size = n_images if self.options.batchnorm == "batch" else 128
        feature_pass(
            model,
            calib,
            taps,
            reduce,
            n_images=n_images,
            batch_size=batch_size,
            batchnorm=self.options.batchnorm,
            pair_by_firing_order=self.options.legacy_hook_order,
            who="redundancy_graph",
        )
        layers = {}
        for conv, acc in accumulators.items():
            sim = acc.similarity()
            l1 = layer_weight(model, conv).abs().sum(1).double()
            if sim.shape[0] != l1.numel():
                raise ConfigError(
                    f"redundancy_graph: conv {conv!r} has {l1.numel()} filters but was paired with maps of "
                    f"{sim.shape[0]} channels (legacy_hook_order pairs maps by firing order)"
                )
            layers[conv] = LayerEvidence(sim, l1, acc.bits, acc.images)
        self._evidence.update(key=key, groups=groups, layers=layers)
        return groups, layers

    # ------------------------------------------------------------ plan

    def layer_tau(self, group: LayerGroup) -> float:
        """τ of a group's graph: the global τ, or the last `layer_tau` rule naming any member; rules that
        give one coupled group two values are refused."""
        found: dict[str, float] = {}
        for name in group.members:
            for pattern, tau in self.options.rules:
                if fnmatch.fnmatchcase(name, pattern):
                    found[name] = tau
        if len(set(found.values())) > 1:
            listed = ", ".join(f"{n}:{t:g}" for n, t in found.items())
            raise ConfigError(
                f"layers {', '.join(group.members)} share their output channels and are pruned by one "
                f"graph, but layer_tau gives them different values ({listed}); give them one"
            )
        return next(iter(found.values()), self.options.tau)

    def plan(self, model: nn.Module, calib: Calib | None) -> dict[str, list[int]]:
        return self._plan(model, calib)[0]

    def _plan(self, model: nn.Module, calib: Calib | None) -> tuple[dict[str, list[int]], dict[str, Any]]:
        groups, layers = self.evidence(model, calib)
        names = [name for group in groups for name in group.members]
        for pattern, _ in self.options.rules:
            if not fnmatch.filter(names, pattern):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ConfigError(
                    f"layer_tau pattern {pattern!r} matches no prunable layer; they are named like: {shown}"
                )
        plan: dict[str, list[int]] = {}
        report: dict[str, Any] = {}
        for group in groups:
            leader = _leader(group, model)
            if leader is None:
                continue
            tau = self.layer_tau(group)
            graph = edges(layers[leader].similarity, tau)
            result = kcore_collapse(graph, layers[leader].l1)
            report[leader] = {
                "tau": tau,
                "edges": int(graph.sum()) // 2,
                "rounds": len(result.rounds),
                "kept": len(result.kept),
                "of": group.out_channels,
                **({"coupled": list(group.members[1:])} if len(group.members) > 1 else {}),
            }
            if len(result.kept) < group.out_channels:
                # The graph is over the leader's channels; members of other widths (concatenations,
                # chunks) keep the channels of the same units.
                units = (
                    result.kept
                    if group.unit_of is None
                    else sorted({group.unit_of[leader][c] for c in result.kept})
                )
                plan.update(group.kept_channels(units))
        return plan, report

    def prune(self, model: nn.Module, calib: Calib | None, stage: Stage | None = None) -> Pruned:
        from prunekit.surgery import apply

        plan, report = self._plan(model, calib)
        example = example_input(calib, self.name)
        small = apply(model, plan, example)
        per_layer = {
            row.name: row.macs
            for row in cost(small, tuple(example.shape)).layers
            if row.type in ("Conv2d", "Linear")
        }
        evidence = next(iter(self._evidence["layers"].values()), None)
        details = {
            "tau": self.options.tau,
            "images": evidence.images if evidence is not None else 0,
            "graphs": report,
            "macs_per_layer": per_layer,
        }
        return Pruned(small, details=details)


def _leader(group: LayerGroup, model: nn.Module) -> str | None:
    """The conv whose graph decides a coupled group's channels: its first conv in execution order."""
    return next((n for n in group.members if isinstance(model.get_submodule(n), nn.Conv2d)), None)
