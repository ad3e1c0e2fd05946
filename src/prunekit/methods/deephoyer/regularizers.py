"""DeepHoyer's sparsity regularisers (Yang, Wen, Li, ICLR 2020), each a function of one weight tensor.

Element-wise, over all elements of the tensor (``‖w‖₁ = Σ|wᵢ|``, ``‖w‖₂² = Σwᵢ²``):

- ``l1``: ‖w‖₁ (a sum, not a mean);
- ``hoyer``: ‖w‖₁ / ‖w‖₂, in [1, √N];
- ``hoyer_square`` (HS, the paper's element-wise DeepHoyer): ‖w‖₁² / ‖w‖₂², in [1, N], scale invariant;
- ``transformed_l1`` (Ma et al. 2019): Σ (a+1)|wᵢ| / (a+|wᵢ|), a = 1 in the release.

Structural, on the group norms ``s_g = ‖w_g‖₂`` of a conv weight (n, c, kh, kw) or a linear weight
(out, in). Both groupings take part: filters W[o] and input channels W[:, i] (rows and columns of a linear
weight); with ``S_f``/``S_c`` the sums of the filter/channel norms and ``‖W‖_F²`` the squared norm:

- ``group_lasso``: S_f + S_c;
- ``group_hoyer``: (S_f + S_c) / ‖W‖_F   (in the CIFAR/ImageNet release as ``--reg 2``, not in the paper);
- ``group_hs`` (Group-HS, the paper's structural DeepHoyer): (S_f² + S_c²) / ‖W‖_F²
  = HS(filter norms) + HS(channel norms).

``fibre=True`` reproduces the grouping of the MNIST-CNN Group Lasso and of every ImageNet group
regulariser in the release: norms over dim 0 and over dim 1 only, so a k×k conv (k > 1) is grouped into
per-kernel-position fibres W[:, i, y, x] and W[o, :, y, x] instead of channels and filters. For linear
layers and 1×1 convs the two groupings coincide.

Zeros never give NaN: the release skips a tensor whose ‖w‖₁ is 0 (its ratios would be 0/0); here such
a tensor contributes 0 with a zero gradient, branch-free, so no per-tensor host sync is needed. A zero
*group* (which the release does not guard; autograd's sqrt gives ∞·0 there) has norm 0 and gradient 0,
the same subgradient choice as sign(0) = 0, so the value stays exact (no ε added to the norms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import Tensor

from prunekit.errors import ConfigError, unknown_name

ELEMENTWISE = ("l1", "hoyer", "hoyer_square", "transformed_l1")
GROUPED = ("group_lasso", "group_hoyer", "group_hs")
REGULARIZERS = ELEMENTWISE + GROUPED


def _nonzero_or_one(x: Tensor) -> Tensor:
    """A denominator that is 1 where `x` is 0: the ratio's numerator is 0 there, so the term is 0."""
    return x.where(x > 0, 1.0)


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with gradient 0 (not NaN) at 0. The inner `where` keeps sqrt away from 0, because a masked-out
    branch still backpropagates ∞ · 0 = NaN."""
    positive = x > 0
    return x.where(positive, 1.0).sqrt().where(positive, 0.0)


def l1(w: Tensor) -> Tensor:
    return w.abs().sum()


def hoyer(w: Tensor) -> Tensor:
    return w.abs().sum() / _nonzero_or_one(w.square().sum()).sqrt()


def hoyer_square(w: Tensor) -> Tensor:
    return w.abs().sum().square() / _nonzero_or_one(w.square().sum())


def transformed_l1(w: Tensor, a: float = 1.0) -> Tensor:
    if not a > 0:
        raise ConfigError(f"transformed L1 needs a > 0, got {a}")
    magnitude = w.abs()
    return ((a + 1.0) * magnitude / (a + magnitude)).sum()


def group_norms(w: Tensor, *, fibre: bool = False) -> tuple[Tensor, Tensor]:
    """(filter/row norms, input-channel/column norms), flattened. With `fibre`, the release's dims-0/1
    norms: (n·kh·kw fibres W[o, :, y, x], c·kh·kw fibres W[:, i, y, x])."""
    if w.dim() < 2:
        raise ConfigError(
            "group regularisers need a conv or linear weight (≥ 2 dims), "
            f"got a tensor of shape {tuple(w.shape)}"
        )
    squared = w.square()
    if fibre:
        return _safe_sqrt(squared.sum(1)).flatten(), _safe_sqrt(squared.sum(0)).flatten()
    rest = tuple(range(2, w.dim()))
    return _safe_sqrt(squared.sum((1, *rest))), _safe_sqrt(squared.sum((0, *rest)))


def group_lasso(w: Tensor, *, fibre: bool = False) -> Tensor:
    filters, channels = group_norms(w, fibre=fibre)
    return filters.sum() + channels.sum()


def group_hoyer(w: Tensor, *, fibre: bool = False) -> Tensor:
    filters, channels = group_norms(w, fibre=fibre)
    return (filters.sum() + channels.sum()) / _nonzero_or_one(w.square().sum()).sqrt()


def group_hs(w: Tensor, *, fibre: bool = False) -> Tensor:
    filters, channels = group_norms(w, fibre=fibre)
    return (filters.sum().square() + channels.sum().square()) / _nonzero_or_one(w.square().sum())


_ELEMENT_TERMS: dict[str, Callable[[Tensor], Tensor]] = {
    "l1": l1,
    "hoyer": hoyer,
    "hoyer_square": hoyer_square,
}
_GROUP_TERMS = {"group_lasso": group_lasso, "group_hoyer": group_hoyer, "group_hs": group_hs}


def regularizer(name: str, *, a: float = 1.0, fibre: bool = False) -> Callable[[Tensor], Tensor]:
    """The per-tensor term `name` with its parameters bound: ``a`` for transformed_l1, ``fibre`` for the
    group regularisers."""
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", name, REGULARIZERS)
    if name == "transformed_l1":
        if not a > 0:
            raise ConfigError(f"transformed L1 needs a > 0, got {a}")
        return partial(transformed_l1, a=a)
    if name in _GROUP_TERMS:
        return partial(_GROUP_TERMS[name], fibre=fibre)
    return _ELEMENT_TERMS[name]


def total(tensors: Iterable[Tensor], name: str, *, a: float = 1.0, fibre: bool = False) -> Tensor:
    """Σ over `tensors` of the per-tensor term (one value per tensor, as the release: never one term over
    the whole network). The caller multiplies by the decay."""
    term = regularizer(name, a=a, fibre=fibre)
    values = [term(w) for w in tensors]
    if not values:
        raise ConfigError(f"regularizer {name!r} was given no tensors to act on")
    return torch.stack(values).sum()
