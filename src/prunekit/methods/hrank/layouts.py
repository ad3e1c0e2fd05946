"""What HRank's per-architecture conventions mean for the zoo's models (specs/hrank.md §1.2, §2).

Which module's output each conv is ranked on (the **taps**) is zoo metadata that other methods share:
the model declares it (`prunekit.models.feature_taps(model, "activation")`). For each architecture of
the HRank release this module adds, as data built from the model's own module names:

- the **entries**: what entry k of a ``compress_rate`` list prunes, in HRank's "mask order" (the
  parameter order `mask.py` walks) and in the order its FLOPs script reads them, which differs for
  ResNet-50 and GoogLeNet (bugs of the release, kept so the published counts reproduce);
- the **presets**: every published configuration, by name.

A model that declares taps but is not of a family listed here gets one entry per tapped conv. Any model
that declares none falls back to one entry per conv, ranked after the activation its output flows into
(or on its own output where there is none: `models.taps.fallback_activation_taps`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Literal

from torch import nn

from prunekit.errors import ConfigError, unknown_name
from prunekit.methods.selection import parse_selection
from prunekit.models.densenet import DenseNet
from prunekit.models.googlenet import GoogLeNet
from prunekit.models.resnet_imagenet import ImageNetResNet
from prunekit.models.taps import FeatureTap, fallback_activation_taps, feature_taps
from prunekit.models.vgg import VGG16BN

#: Which order reads a compress_rate: HRank's masks (the real pruning) or its FLOPs script.
EntryOrder = Literal["mask", "flops_script"]


#: Conv `conv` is ranked on channels ``[start:stop]`` of the forward output of module `module`.
Tap = FeatureTap


@dataclass(frozen=True)
class ArchLayout:
    """HRank's conventions for one model. `entries[k]` are the convs entry k of a compress_rate prunes
    (mask order); `flops_entries` the same as HRank's FLOPs script reads the list. `legacy_inputs[c]` are
    the convs whose pruned filters HRank's counter subtracts from conv c's input width (DenseNet
    transitions only: the counter never reduces any other input)."""

    arch: str
    entries: tuple[tuple[str, ...], ...]
    taps: tuple[Tap, ...]
    flops_entries: tuple[tuple[str, ...], ...] | None = None
    legacy_inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fallback: bool = False

    def entries_for(self, mapping: EntryOrder = "mask") -> tuple[tuple[str, ...], ...]:
        if mapping not in ("mask", "flops_script"):
            raise unknown_name("compress_rate mapping", mapping, ["mask", "flops_script"])
        return self.flops_entries if mapping == "flops_script" and self.flops_entries else self.entries

    def describe(self, mapping: EntryOrder = "mask", head: int = 4, tail: int = 2) -> str:
        """'entry 0 -> conv1; entry 1 -> layer1.0.conv1; ...' for error messages (first and last few)."""
        entries = self.entries_for(mapping)
        shown = [(k, entries[k]) for k in range(min(head, len(entries)))]
        last = [(k, entries[k]) for k in range(max(head, len(entries) - tail), len(entries))]
        parts = [f"entry {k} -> {', '.join(convs) or '(not pruned)'}" for k, convs in shown]
        if last and last[0][0] > head:
            parts.append("...")
        parts += [f"entry {k} -> {', '.join(convs) or '(not pruned)'}" for k, convs in last]
        return "; ".join(parts)


# ---------------------------------------------------------------- per-architecture layouts


def _one_entry_per_conv(taps: Sequence[Tap]) -> tuple[tuple[str, ...], ...]:
    # HRank's rule wherever its code has nothing special: entry k prunes the k-th ranked conv.
    return tuple((conv,) for conv in dict.fromkeys(tap.conv for tap in taps))


def _vgg16(model: VGG16BN, arch: str, taps: tuple[Tap, ...]) -> ArchLayout:
    # The 13th entry is read but never used: HRank has no rank file for conv13 and never prunes it.
    return ArchLayout(arch, (*_one_entry_per_conv(taps), ()), taps)


def _densenet(model: DenseNet, arch: str, taps: tuple[Tap, ...]) -> ArchLayout:
    legacy_inputs: dict[str, tuple[str, ...]] = {}
    block_convs = ["conv1"]  # the convs whose outputs make up a transition's input
    for dense, trans in (("dense1", "trans1"), ("dense2", "trans2")):
        block_convs += [f"{dense}.{i}.conv1" for i in range(len(getattr(model, dense)))]
        legacy_inputs[f"{trans}.conv1"] = tuple(block_convs)
        block_convs = [f"{trans}.conv1"]
    return ArchLayout(arch, _one_entry_per_conv(taps), taps, legacy_inputs=legacy_inputs)


def _googlenet(model: GoogLeNet, arch: str, taps: tuple[Tap, ...]) -> ArchLayout:
    # One entry per rank file, i.e. per tapped tensor: the stem, then all ranked convs of one inception
    # module (the two 1x1 reductions are never pruned).
    entries = tuple(tuple(t.conv for t in group) for _, group in groupby(taps, key=lambda t: t.module))
    flops = list(entries)
    # HRank's GoogLeNet FLOPs model reads rate[6] for c4 (and d4); rate[5] is never read.
    flops[5], flops[6] = (), entries[5] + entries[6]
    return ArchLayout(arch, entries, taps, flops_entries=tuple(flops))


def _imagenet_resnet(model: ImageNetResNet, arch: str, taps: tuple[Tap, ...]) -> ArchLayout:
    entries: list[tuple[str, ...]] = [("conv1",)]
    flops: list[tuple[str, ...]] = [("conv1",)]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for b, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{b}"
            block_entries = [(f"{name}.conv{i}",) for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
            if block.downsample is not None:
                entries += [*block_entries, (f"{name}.downsample.0",)]
                # HRank's FLOPs model slices a stage's rates as [downsample, conv1, conv2, conv3, ...].
                flops += [(f"{name}.downsample.0",), *block_entries]
            else:
                entries += block_entries
                flops += block_entries
    return ArchLayout(arch, tuple(entries), taps, flops_entries=tuple(flops))


# Families whose compress_rate differs from one entry per tapped conv, in tap order.
_FAMILIES = (
    (VGG16BN, _vgg16),
    (DenseNet, _densenet),
    (GoogLeNet, _googlenet),
    (ImageNetResNet, _imagenet_resnet),
)


#: Fallback layouts already found, per model: one run asks for the layout from several places (and some
#: of them reset the warning filters), so the trace and its warning happen once per model.
_FALLBACKS: weakref.WeakKeyDictionary[nn.Module, ArchLayout] = weakref.WeakKeyDictionary()


def _fallback(model: nn.Module, arch: str) -> ArchLayout:
    """One entry per Conv2d in registration order, each ranked after the activation its output flows into
    where there is one (`models.taps.fallback_activation_taps`), on its own output otherwise."""
    entries = tuple((name,) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    cached = _FALLBACKS.get(model)
    if cached is not None and (cached.arch, cached.entries) == (arch, entries):
        return cached
    found = fallback_activation_taps(model)
    message = (
        f"HRank has no tap points for {arch!r}; ranking each conv on the output of the ReLU (or other "
        "activation module) its output flows into"
    )
    if not found.traced:
        message += "; the forward could not be traced, so every conv is ranked on its own output"
    elif found.raw:
        # Pre-ReLU maps are almost always full rank (HRank issue #13), so these scores are weak.
        shown = ", ".join(found.raw[:8]) + (f" (+{len(found.raw) - 8} more)" if len(found.raw) > 8 else "")
        message += (
            f"; no ReLU follows {shown} (or it is functional or reused in the forward), which are "
            "ranked on their own output"
        )
    if found.untapped:
        message += f"; not ranked (run more than once per forward, or never): {', '.join(found.untapped)}"
    warnings.warn(message, stacklevel=1)
    layout = ArchLayout(arch, entries, found.taps, fallback=True)
    _FALLBACKS[model] = layout
    return layout


def layout_for(model: nn.Module) -> ArchLayout:
    """HRank's layout for `model`: the activation taps the model declares (`models.feature_taps`), with
    the compress_rate entries of its family (found by class, so any depth of a family works); a model
    that declares no taps gets the fallback."""
    arch = getattr(model, "prunekit_arch", {}).get("name", type(model).__name__)
    taps = feature_taps(model, "activation")
    if taps is None:
        return _fallback(model, arch)
    for cls, build in _FAMILIES:
        if isinstance(model, cls):
            return build(model, arch, taps)
    return ArchLayout(arch, _one_entry_per_conv(taps), taps)


# ---------------------------------------------------------------- compress rates


#: Every published configuration with a released compress_rate (specs/hrank.md §2.3). The key names the
#: architecture and the paper's top-1 accuracy for that row.
PRESETS: dict[str, str] = {
    "vgg16_bn_hrank_93.43": "[0.7]*7+[0.1]*6",
    "vgg16_bn_hrank_92.34": "[0.95]+[0.5]*6+[0.9]*4+[0.8]*2",
    "resnet56_hrank_93.17": (
        "[0.1]+[0.60]*35+[0.0]*2+[0.6]*6+[0.4]*3+[0.1]+[0.4]+[0.1]+[0.4]+[0.1]+[0.4]+[0.1]+[0.4]"
    ),
    "resnet110_hrank_94.23": "[0.1]+[0.40]*36+[0.40]*36+[0.4]*36",
    "densenet40_hrank_94.24": ("[0.0]+[0.1]*6+[0.7]*6+[0.0]+[0.1]*6+[0.7]*6+[0.0]+[0.1]*6+[0.7]*5+[0.0]"),
    "googlenet_hrank_94.53": "[0.10]+[0.7]+[0.5]+[0.8]*4+[0.5]+[0.6]*2",
    "googlenet_hrank_94.07": "[0.10]+[0.8]*5+[0.85]+[0.8]*3",
    "resnet50_hrank_71.98": "[0.2]+[0.8]*10+[0.8]*13+[0.55]*19+[0.45]*10",
}


def compress_rates(spec: str | Sequence[float], layout: ArchLayout) -> list[float]:
    """The per-entry rates of a compress_rate list expression, a preset name, a single rate for every
    entry, or a list of floats; refused unless it has exactly one rate per entry of `layout`."""
    if isinstance(spec, str):
        text = PRESETS.get(spec.strip(), spec)
        selection = parse_selection(text)
        if selection.uniform is not None:
            return [selection.uniform] * len(layout.entries)
        if selection.sequence is None:
            raise ConfigError(
                f"HRank's compress_rate is a list expression such as '[0.1]+[0.6]*35+[0.0]*2', a single "
                f"rate, or a preset ({', '.join(sorted(PRESETS))}); got {spec!r}"
            )
        rates = list(selection.sequence)
    else:
        rates = [float(r) for r in spec]
        bad = [r for r in rates if not 0.0 <= r < 1.0]
        if bad:
            raise ConfigError(f"compress rates must lie in [0, 1) (fraction of filters removed); got {bad}")
    if len(rates) != len(layout.entries):
        raise ConfigError(
            f"compress_rate {spec if isinstance(spec, str) else rates!r} has {len(rates)} entries but "
            f"{layout.arch} needs {len(layout.entries)}, one per entry in HRank's order: {layout.describe()}"
        )
    return rates


def conv_rates(
    layout: ArchLayout, spec: str | Sequence[float], mapping: EntryOrder = "mask"
) -> dict[str, float]:
    """Rate per conv that `spec` prunes (convs it does not reach are absent)."""
    rates = compress_rates(spec, layout)
    return {
        conv: rate for convs, rate in zip(layout.entries_for(mapping), rates, strict=True) for conv in convs
    }
