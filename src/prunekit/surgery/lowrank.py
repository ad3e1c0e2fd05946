"""Low-rank convolutions: a conv replaced by two thinner convs from the SVD of its weight (TRP §2).

Three schemes, named as in TRP's release:

- ``"NC"`` (channel-wise, Zhang et al. 2016): the weight reshaped to ``(n, c·kh·kw)`` is factorised;
  ``first`` is a ``c → r`` conv with the original kernel, stride, padding and dilation, ``second`` a
  ``r → n`` 1×1 conv carrying the bias. √σ goes to each factor.
- ``"VH"`` (spatial-wise, Jaderberg et al. 2014): the weight permuted to ``(c, kh, n, kw)`` and reshaped
  to ``(c·kh, n·kw)`` is factorised; ``first`` is a vertical ``(kh × 1)`` conv, ``second`` a horizontal
  ``(1 × kw)`` conv carrying the bias. All of σ goes to the horizontal factor, as in the release.
- ``"ND"`` (network decoupling, Guo et al. 2018; the release's extra scheme, specs/trp.md §2.3): each
  output filter's ``(c, kh·kw)`` matrix is factorised on its own, and the common rank R is the largest any
  filter needs. Path j of filter i is a pointwise conv (c → 1, U_i[:, j]·√σ_ij) then a depthwise kh × kw
  conv (√σ_ij · V_iᵀ[j]) with the original stride and padding; the R paths are summed. Built as two convs:
  ``first`` a 1×1 ``c → n·R`` conv (path j of filter i is channel i·R + j), ``second`` a ``n·R → n`` conv
  with ``groups=n`` (group i sums filter i's paths) carrying the bias.

At full rank the factorised conv equals the original to machine precision; at rank r the discarded
Frobenius energy of the scheme's matrix is Σ_{i>r} σ_i² (for ND, summed over the filters).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, SurgeryError, unknown_name
from prunekit.surgery.edits import LowRankEdit, record

SCHEMES: tuple[str, ...] = ("NC", "VH", "ND")

_Svd = tuple[Tensor, Tensor, Tensor]


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise unknown_name("low-rank scheme", scheme, SCHEMES)


def to_matrix(weight: Tensor, scheme: str) -> Tensor:
    """The matrix a scheme factorises: NC ``(n, c·kh·kw)``, VH ``(c·kh, n·kw)``; ND a stack of one
    ``(c, kh·kw)`` matrix per output filter, ``(n, c, kh·kw)``."""
    _check_scheme(scheme)
    n, c, kh, kw = weight.shape
    if scheme == "NC":
        return weight.reshape(n, c * kh * kw)
    if scheme == "ND":
        return weight.reshape(n, c, kh * kw)
    return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


def from_matrix(matrix: Tensor, scheme: str, shape: Sequence[int]) -> Tensor:
    """Inverse of `to_matrix`: the conv weight of `shape` ``(n, c, kh, kw)`` that `matrix` stands for."""
    _check_scheme(scheme)
    n, c, kh, kw = shape
    if scheme in ("NC", "ND"):
        return matrix.reshape(n, c, kh, kw)
    return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()


def full_rank(conv: nn.Conv2d, scheme: str) -> int:
    """The largest rank `scheme` can give `conv` (the smaller side of its matrix; ND: of a filter's)."""
    _check_scheme(scheme)
    n, c, kh, kw = conv.weight.shape
    if scheme == "ND":
        return min(c, kh * kw)
    return min(n, c * kh * kw) if scheme == "NC" else min(c * kh, n * kw)


def common_rank(sigma: Tensor, rule: Callable[[Tensor], int]) -> int:
    """`rule` on a conv's singular values; for ND (one row per output filter) the largest rank any filter
    needs, which every filter's paths then share (specs/trp.md §2.3)."""
    if sigma.dim() == 1:
        return rule(sigma)
    return max(rule(row) for row in sigma)


def _by_shape(matrices: Sequence[Tensor], fn: Callable[[Tensor], Any]) -> list[Any]:
    """`fn` applied to float64 stacks of the same-shaped `matrices` (one batched call per shape, and
    float64 so rank rules and full-rank reconstructions do not depend on float32 round-off); returns
    the per-matrix slices of its output(s), in input order."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(matrices):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    out: dict[int, Any] = {}
    for idx in by_shape.values():
        result = fn(torch.stack([matrices[i].detach().to(torch.float64) for i in idx]))
        for j, i in enumerate(idx):
            out[i] = tuple(t[j] for t in result) if isinstance(result, tuple) else result[j]
    return [out[i] for i in range(len(matrices))]


def _svd_many(matrices: Sequence[Tensor]) -> list[_Svd]:
    return _by_shape(matrices, lambda m: tuple(torch.linalg.svd(m, full_matrices=False)))


def singular_values(conv: nn.Conv2d, scheme: str) -> Tensor:
    """σ of the scheme's matrix of `conv.weight`, descending, float64 (ND: one row per output filter)."""
    return torch.linalg.svdvals(to_matrix(conv.weight.detach().to(torch.float64), scheme))


def rank_for_energy(sigma: Tensor, energy: float) -> int:
    """TRP's EnergyThreshold: the smallest k with Σ_{i≤k} σ_i² / Σ_i σ_i² ≥ `energy` (energy in (0, 1))."""
    if not 0.0 < energy < 1.0:
        raise ConfigError(f"energy threshold must be in (0, 1), got {energy}; e.g. 0.9 keeps 90% of σ²")
    power = sigma.to(torch.float64).square()
    total = power.sum()
    if total == 0:
        return 1  # an all-zero weight is exactly rank-1 (zero) and rank 0 is not a layer
    reached = (power.cumsum(0) / total >= energy).nonzero()
    # Round-off can keep the last ratio a hair under a threshold close to 1: keep everything then.
    return int(reached[0]) + 1 if len(reached) else len(sigma)


def rank_for_value(sigma: Tensor, threshold: float) -> int:
    """TRP's ValueThreshold: the number of leading σ_i ≥ `threshold` (at least 1)."""
    if threshold < 0:
        raise ConfigError(f"singular-value threshold must be >= 0, got {threshold}")
    return max(1, int((sigma >= threshold).sum()))


def energy_rank(conv: nn.Conv2d, scheme: str, energy: float = 0.9) -> int:
    """The rank TRP's energy rule gives `conv` (default T = 0.9, the released training value)."""
    return common_rank(singular_values(conv, scheme), partial(rank_for_energy, energy=energy))


def rank_plan(
    model: nn.Module,
    layers: Iterable[str],
    scheme: str,
    *,
    energy: float | None = None,
    threshold: float | None = None,
) -> dict[str, tuple[str, int]]:
    """A `decompose` plan for `layers`, each rank chosen by TRP's energy rule (`energy`, used while
    training) or its singular-value rule (`threshold`, its final decomposition); give exactly one.
    Singular values come from one batched SVD per distinct weight shape."""
    if energy is not None and threshold is None:
        rule: Callable[[Tensor], int] = partial(rank_for_energy, energy=energy)
    elif threshold is not None and energy is None:
        rule = partial(rank_for_value, threshold=threshold)
    else:
        raise ConfigError("give exactly one rank rule: energy=T (e.g. 0.9) or threshold=t (e.g. 0.05)")
    modules = dict(model.named_modules())
    names = list(layers)
    for name in names:
        _check_decomposable(_find_module(name, modules), scheme, 1, name)
    sigmas = _by_shape([to_matrix(modules[name].weight, scheme) for name in names], torch.linalg.svdvals)
    return {name: (scheme, common_rank(sigma, rule)) for name, sigma in zip(names, sigmas, strict=True)}


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class LowRankConv2d(nn.Module):
    """A conv factorised into `first` then `second` (see the module docstring for the two schemes).

    The constructor builds the shapes only (weights randomly initialised, as ``nn.Conv2d``); use
    `from_conv` to fill them from a trained conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        scheme: str,
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_scheme(scheme)
        kh, kw = _pair(kernel_size)
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        self.scheme = scheme
        self.rank = rank
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kh, kw)
        factory = {"device": device, "dtype": dtype, "padding_mode": padding_mode}
        if scheme == "NC":
            self.first = nn.Conv2d(
                in_channels, rank, (kh, kw), (sh, sw), padding, (dh, dw), bias=False, **factory
            )
            self.second = nn.Conv2d(rank, out_channels, 1, bias=bias, **factory)
        elif scheme == "ND":
            # A pointwise conv commutes with padding (it maps each position on its own, zero to zero
            # without a bias, and reflect/circular pads copy positions), so all of it goes to `second`.
            self.first = nn.Conv2d(in_channels, out_channels * rank, 1, bias=False, **factory)
            self.second = nn.Conv2d(
                out_channels * rank, out_channels, (kh, kw), (sh, sw), padding, (dh, dw), groups=out_channels,
                bias=bias, **factory,
            )  # fmt: skip
        else:
            # Padding splits per axis (also 'same'/'valid', and reflect/circular modes, which are
            # separable), so the vertical conv pads rows only and the horizontal conv columns only.
            if isinstance(padding, str):
                pad_v: str | tuple[int, int] = padding
                pad_h: str | tuple[int, int] = padding
            else:
                ph, pw = _pair(padding)
                pad_v, pad_h = (ph, 0), (0, pw)
            self.first = nn.Conv2d(in_channels, rank, (kh, 1), (sh, 1), pad_v, (dh, 1), bias=False, **factory)
            self.second = nn.Conv2d(
                rank, out_channels, (1, kw), (1, sw), pad_h, (1, dw), bias=bias, **factory
            )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scheme: str, rank: int, *, name: str = "conv") -> LowRankConv2d:
        """The rank-`rank` factorisation of `conv` (rank = full rank reproduces `conv` exactly)."""
        _check_decomposable(conv, scheme, rank, name)
        (svd,) = _svd_many([to_matrix(conv.weight.detach(), scheme)])
        return cls._from_svd(conv, scheme, rank, svd)

    @classmethod
    def shaped_like(cls, conv: nn.Module, scheme: str, rank: int, *, name: str = "conv") -> LowRankConv2d:
        """An untrained rank-`rank` factorisation with `conv`'s geometry, device and dtype (no SVD): the
        shell a checkpoint's edit history rebuilds before loading the stored factors."""
        _check_decomposable(conv, scheme, rank, name)
        return cls._shell(conv, scheme, rank)

    @classmethod
    def _shell(cls, conv: nn.Conv2d, scheme: str, rank: int) -> LowRankConv2d:
        weight = conv.weight
        module = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            scheme,
            rank,
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        module.train(conv.training)
        return module

    @classmethod
    def _from_svd(cls, conv: nn.Conv2d, scheme: str, rank: int, svd: _Svd) -> LowRankConv2d:
        module = cls._shell(conv, scheme, rank)
        n, c, kh, kw = conv.weight.shape
        if scheme == "ND":  # per filter i: u (n, c, m), s (n, m), vh (n, m, kh·kw)
            u, s, vh = svd[0][..., :rank], svd[1][:, :rank], svd[2][:, :rank]
            root = s.sqrt()
            first = (u * root[:, None, :]).permute(0, 2, 1).reshape(n * rank, c, 1, 1)
            second = (root[:, :, None] * vh).reshape(n, rank, kh, kw)
        elif scheme == "NC":
            u, s, vh = svd[0][:, :rank], svd[1][:rank], svd[2][:rank]
            root = s.sqrt()
            first = (root[:, None] * vh).reshape(rank, c, kh, kw)
            second = (u * root).reshape(n, rank, 1, 1)
        else:
            u, s, vh = svd[0][:, :rank], svd[1][:rank], svd[2][:rank]
            first = u.T.reshape(rank, c, kh, 1)  # [j, ci, y, 0] = U[(ci, y), j]
            second = (s[:, None] * vh).reshape(rank, n, kw).permute(1, 0, 2).unsqueeze(2)
        with torch.no_grad():
            module.first.weight.copy_(first)
            module.second.weight.copy_(second)
            if conv.bias is not None:
                module.second.bias.copy_(conv.bias)
        return module

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def prunekit_cost(self, inp: Tensor | tuple[Tensor, ...], out: Tensor) -> tuple[int, int]:
        """(params, MACs per example) of both convs; MACs = out_ch · in_ch · kernel area per output
        position, as for any conv. Bias adds params, not MACs."""
        x = inp[0] if isinstance(inp, tuple) else inp
        h_out, w_out = out.shape[-2:]
        # NC's 1×1 `second` keeps the spatial size, so `first` already produces the output size; VH's
        # vertical `first` leaves the width untouched and strides only rows; ND's pointwise `first` runs
        # at the input size (the depthwise `second` strides).
        middle = {"NC": (h_out, w_out), "VH": (h_out, x.shape[-1]), "ND": tuple(x.shape[-2:])}
        h_mid, w_mid = middle[self.scheme]
        macs = 0
        for conv, (h, w) in ((self.first, (h_mid, w_mid)), (self.second, (h_out, w_out))):
            kh, kw = conv.kernel_size
            macs += conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * h * w
        params = sum(p.numel() for p in self.parameters())
        return params, int(macs)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, rank={self.rank}"


def _check_decomposable(module: nn.Module, scheme: str, rank: int, name: str) -> None:
    _check_scheme(scheme)
    if type(module) is not nn.Conv2d:
        raise SurgeryError(
            f"layer {name!r} is a {type(module).__name__}, not an nn.Conv2d: cannot decompose it"
        )
    if module.groups != 1:
        raise SurgeryError(
            f"layer {name!r} is a grouped conv (groups={module.groups}); low-rank decomposition supports "
            "groups=1 only: leave it out of the plan"
        )
    top = full_rank(module, scheme)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= top:
        raise SurgeryError(
            f"rank {rank!r} for layer {name!r} ({scheme}) is out of range: must be an integer 1..{top} "
            f"(full rank of its {tuple(to_matrix(module.weight, scheme).shape)} matrix)"
        )


def _find_module(name: str, modules: Mapping[str, nn.Module]) -> nn.Module:
    if not name or name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"no layer named {name!r} in the model{hint}")
    return modules[name]


def decompose(model: nn.Module, plan: Mapping[str, tuple[str, int]]) -> nn.Module:
    """A copy of `model` where each conv named in `plan` (``{layer: (scheme, rank)}``) is replaced by
    its `LowRankConv2d`. Every entry is checked before anything is built; other layers are untouched
    copies, ``prunekit_arch`` and the other model attributes are kept, and the decomposition is appended
    to the copy's edit history (`surgery.history`)."""
    modules = dict(model.named_modules())
    for name, entry in plan.items():
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise ConfigError(f"low-rank plan entry for {name!r} must be (scheme, rank), got {entry!r}")
        _check_decomposable(_find_module(name, modules), entry[0], entry[1], name)
    new = copy.deepcopy(model)
    convs = {name: new.get_submodule(name) for name in plan}
    svds = _svd_many([to_matrix(conv.weight.detach(), plan[name][0]) for name, conv in convs.items()])
    for (name, conv), svd in zip(convs.items(), svds, strict=True):
        scheme, rank = plan[name]
        parent_name, _, leaf = name.rpartition(".")
        setattr(new.get_submodule(parent_name), leaf, LowRankConv2d._from_svd(conv, scheme, rank, svd))
    record(new, LowRankEdit({name: (scheme, rank) for name, (scheme, rank) in plan.items()}))
    return new


def lowrank_macs(
    conv: nn.Conv2d, scheme: str, rank: int, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> int:
    """MACs per image of `conv` factorised at `rank` (what `LowRankConv2d.prunekit_cost` counts), from
    its input and output sizes alone, so a rank can be priced before anything is built."""
    _check_scheme(scheme)
    n, c, kh, kw = conv.weight.shape
    h_out, w_out = out_hw
    if scheme == "NC":
        return rank * c * kh * kw * h_out * w_out + n * rank * h_out * w_out
    if scheme == "ND":  # the pointwise factor runs at the input size, the depthwise one strides
        return n * rank * c * in_hw[0] * in_hw[1] + n * rank * kh * kw * h_out * w_out
    # The vertical factor strides rows only, so it runs at the input width.
    return rank * c * kh * h_out * in_hw[1] + n * rank * kw * h_out * w_out
