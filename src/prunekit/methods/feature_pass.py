"""The calibration pass shared by the data-driven criteria: run images through the model once and hand each
tapped conv's feature maps to a reducer as they are produced.

HRank reduces a tap's maps to rank sums, the redundancy graph to pairwise hash distances. Both need the
same forward: hooks on the tapped modules (`models.feature_taps`), the maps of one batch passed to the
reducer inside the hook and then dropped, so peak memory is one layer's maps for one batch — never the
maps of every layer or every image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError
from prunekit.models.probe import probe
from prunekit.models.taps import FeatureTap

#: Called with the convs that read one tapped channel slice and that slice's maps (B, C, H, W).
Reducer = Callable[[tuple[str, ...], Tensor], None]
#: How BatchNorm layers normalise during the pass: running statistics, or those of the batch itself
#: (the redundancy graph's original code never switched to eval mode).
BatchNormMode = Literal["eval", "batch"]


@dataclass(frozen=True)
class PassResult:
    """What one pass saw: the images run, and the tapped modules in the order they fired."""

    images: int
    fired: tuple[str, ...]


def image_batches(source: Tensor | Iterable[Any], batch_size: int) -> Iterable[Tensor]:
    """Batches of images from a tensor (split into `batch_size` chunks) or from an iterable of batches or
    (images, labels, ...) tuples such as a loader."""
    if isinstance(source, Tensor):
        yield from source.split(batch_size)
        return
    for item in source:
        yield item if isinstance(item, Tensor) else item[0]


def firing_order(model: nn.Module, example: Tensor, modules: Sequence[str]) -> tuple[str, ...]:
    """The names of `modules` in the order their forwards run on `example` (one eval-mode forward)."""
    named = dict(model.named_modules())
    fired: list[str] = []
    probe(
        model,
        example,
        [named[name].register_forward_hook(lambda *_a, n=name: fired.append(n)) for name in modules],
    )
    return tuple(fired)


def feature_pass(
    model: nn.Module,
    batches: Tensor | Iterable[Any],
    taps: Sequence[FeatureTap],
    reduce: Reducer,
    *,
    n_images: int,
    batch_size: int = 128,
    batchnorm: BatchNormMode = "eval",
    pair_by_firing_order: bool = False,
    who: str = "the feature pass",
) -> PassResult:
    """Run the first `n_images` images of `batches` through `model` without gradients and call
    ``reduce(convs, maps)`` for every distinct channel slice of every tapped module, as its output is
    produced (`convs`: the convs whose taps read that slice).

    ``batchnorm="batch"`` normalises with each batch's own statistics; the running statistics are put back
    afterwards, so the model leaves the pass exactly as it came. Every other module runs in eval mode.

    ``pair_by_firing_order`` reproduces code that pairs the k-th hook *call* with the k-th tap (in
    `taps` order) instead of matching modules: where a forward runs the modules in another order than
    the taps list them (a shortcut conv evaluated before the block's conv1), maps go to the wrong convs.
    Only for exact reproduction of such code; every tap must then read a whole module once.
    """
    if n_images < 1:
        raise ConfigError(f"{who}: n_images must be at least 1, got {n_images}")
    if batchnorm not in ("eval", "batch"):
        raise ConfigError(f"{who}: batchnorm must be 'eval' or 'batch', got {batchnorm!r}")
    modules = dict(model.named_modules())
    missing = sorted({t.module for t in taps} - set(modules) | {t.conv for t in taps} - set(modules))
    if missing:
        raise ConfigError(f"{who}: taps name modules the model does not have: {', '.join(missing)}")
    names = {module: name for name, module in modules.items()}
    # One reduction per distinct (module, channel slice); several convs may share it.
    slices: dict[nn.Module, dict[tuple[int, int | None], list[str]]] = defaultdict(lambda: defaultdict(list))
    for tap in taps:
        slices[modules[tap.module]][(tap.start, tap.stop)].append(tap.conv)
    if pair_by_firing_order and any(t.start != 0 or t.stop is not None or t.module != t.conv for t in taps):
        raise ConfigError(f"{who}: pairing maps by firing order needs one whole-module tap per conv")
    order = [tap.conv for tap in taps]
    fired: list[str] = []
    calls: dict[nn.Module, int] = defaultdict(int)

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        calls[module] += 1
        if calls[module] > 1:
            raise ConfigError(
                f"{who}: module {names[module]!r} runs more than once per forward; its calls cannot be "
                "told apart — give each use its own module"
            )
        fired.append(names[module])
        if pair_by_firing_order:
            k = len(fired) - 1
            if k >= len(order):
                raise ConfigError(f"{who}: more tapped modules fired than there are taps ({len(order)})")
            reduce((order[k],), output)
            return
        for (start, stop), convs in slices[module].items():
            reduce(tuple(convs), output[:, start:stop])

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    handles = [module.register_forward_hook(hook) for module in slices]
    training = {module: module.training for module in modules.values()}
    norms = [m for m in modules.values() if isinstance(m, _BatchNorm)] if batchnorm == "batch" else []
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.train()
        with torch.no_grad():
            for batch in image_batches(batches, batch_size):
                batch = batch[: n_images - seen].to(device, non_blocking=True)
                if len(batch) == 0:
                    break
                calls.clear()
                fired.clear()
                model(batch)
                seen += len(batch)
                if seen >= n_images:
                    break
    finally:
        for module, flag in training.items():
            module.training = flag
        for m, state in zip(norms, saved, strict=True):
            m.load_state_dict(state)
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ConfigError(f"{who} needs images to compute feature maps; the batches were empty")
    if pair_by_firing_order and len(fired) != len(order):
        raise ConfigError(
            f"{who}: {len(fired)} tapped modules fired but {len(order)} taps were given; pairing by "
            "firing order needs every tapped module to run exactly once"
        )
    return PassResult(seen, tuple(fired))
