"""The penalty terms of TPP and GReg for one layer, vectorised (specs/tpp.md §2.2, §2.3, §6.2).

`removed` is a bool vector over the layer's output filters (True: the filter goes). Every term is a plain
differentiable function of the parameters, so it can be added to the loss and autograd gives the gradients
the released code adds by hand.
"""

from __future__ import annotations

from torch import Tensor


def gram_term(weight: Tensor, removed: Tensor) -> Tensor:
    """Eq. (3) in the code's form: the mean over the N² entries of (G − T)², G = W Wᵀ of the flattened
    filters, T = G with the removed rows and columns zeroed (and no gradient). The kept×kept block of G is
    left free; every entry in a removed row or column is pushed to 0, so
    ``(1/N²) Σ_{i∈S or j∈S} (w_iᵀ w_j)²``."""
    w = weight.flatten(1)
    n = w.shape[0]
    gram = w @ w.T
    touched = removed[:, None] | removed[None, :]  # (1 − m mᵀ) of the paper
    return gram.square().mul(touched.to(gram.dtype)).sum() / (n * n)


def filter_l2(weight: Tensor, coefficient: Tensor) -> Tensor:
    """½ Σ_j c_j ‖w_j‖²: the gradient is c_j · w_j on filter j, the released code's `grad += λ·W` (and
    GReg's ``R ⊙ W``), with c_j = 0 on the filters it leaves alone."""
    return 0.5 * (coefficient * weight.flatten(1).square().sum(1)).sum()


def entry_l2(values: Tensor, coefficient: Tensor) -> Tensor:
    """½ Σ_j c_j v_j² for one value per filter: a bias, or a BatchNorm's γ or β (Eq. (5)'s BN term with
    c = λ on the removed channels)."""
    return 0.5 * (coefficient * values.square()).sum()
