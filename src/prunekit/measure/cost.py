"""Parameters and multiply-accumulates of a model, from one forward pass, under one stated convention.

Every leaf module is hooked; conv and linear layers carry the cost, BatchNorm parameters are reported
separately, everything else (activations, pooling, additions, the option-A shortcut) is free. A module
that knows its own cost (e.g. a low-rank conv pair) defines

    def prunekit_cost(self, inp: tuple[Tensor, ...], out: Tensor) -> tuple[int, int]  # (params, macs)

(parameters, and MACs per image of that call) and is then counted by that report alone, its children
not separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.probe import probe

CONVENTION = (
    "MACs = conv + linear multiply-accumulates per image; params = conv + linear weights and biases; "
    "BN parameters counted separately"
)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class LayerCost:
    """One call of one module. Shapes are per image (batch dimension dropped). A module called twice
    has two rows; its parameters are on the first."""

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    bn_params: int = 0


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    bn_params: int
    total_params: int  # every parameter of the model, whatever its kind, each tensor once
    layers: tuple[LayerCost, ...]
    input_shape: tuple[int, ...]  # (C, H, W) of one image
    convention: str = CONVENTION

    def __str__(self) -> str:
        return (
            f"{self.params:,} params, {self.macs:,} MACs, {self.bn_params:,} BN params "
            f"at input {'x'.join(map(str, self.input_shape))} ({self.convention})"
        )

    def as_dict(self) -> dict[str, Any]:
        """The totals, for summary.json; layers are left out."""
        return {
            "params": self.params,
            "macs": self.macs,
            "bn_params": self.bn_params,
            "total_params": self.total_params,
            "input_shape": list(self.input_shape),
            "convention": self.convention,
        }

    def table(self, all_layers: bool = False) -> str:
        """Per-layer text table in execution order; by default only rows that carry a cost."""
        rows = [r for r in self.layers if all_layers or r.params or r.macs or r.bn_params]
        header = ("layer", "type", "input", "output", "params", "MACs", "MAC %")
        body = [
            (
                r.name,
                r.type,
                "x".join(map(str, r.input_shape)),
                "x".join(map(str, r.output_shape)),
                f"{r.params + r.bn_params:,}",
                f"{r.macs:,}",
                f"{100 * r.macs / self.macs:.2f}" if self.macs else "-",
            )
            for r in rows
        ]
        total = ("total", "", "", "", f"{self.params:,} + {self.bn_params:,} BN", f"{self.macs:,}", "100.00")
        widths = [max(len(row[i]) for row in (header, *body, total)) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            cells = [
                c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *map(line, body), rule, line(total), self.convention])


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _leaf_macs(module: nn.Module, inp: tuple[Any, ...], out: torch.Tensor, batch: int) -> int:
    """MACs per image of one call of a conv or linear leaf; 0 for any other leaf."""
    if isinstance(module, _CONV):
        # Each output element is one dot product over (C_in/groups)·k_h·k_w inputs; the bias add is free.
        return out.numel() // batch * math.prod(module.weight.shape[1:])
    if isinstance(module, _CONV_T):
        # Transposed: each input element is scattered into (C_out/groups)·k_h·k_w outputs.
        x = _first_tensor(inp)
        return 0 if x is None else x.numel() // batch * math.prod(module.weight.shape[1:])
    if isinstance(module, nn.Linear):
        return out.numel() // batch * module.in_features
    return 0


def _normalise_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (3, 4) or any(s <= 0 for s in shape):
        raise ConfigError(
            f"input_shape must be (C, H, W) or (N, C, H, W) with positive sizes; got {tuple(input_shape)}"
        )
    return shape if len(shape) == 4 else (1, *shape)


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """Count `model` on one forward of a zero input of `input_shape` ((C, H, W) or (N, C, H, W);
    counts are per image). The model runs in eval mode without gradients; each module's training flag
    is restored afterwards. Modules the forward never calls cost nothing and are not counted."""
    shape = _normalise_shape(input_shape)
    batch = shape[0]
    names = {m: n or "(model)" for n, m in model.named_modules()}
    # A module with its own report hides its descendants.
    self_reporting = [m for m in names if hasattr(m, "prunekit_cost")]
    hidden = {d for m in self_reporting for d in m.modules() if d is not m}
    hooked = [
        m for m in names if m not in hidden and (m in self_reporting or next(m.children(), None) is None)
    ]

    rows: list[LayerCost] = []
    called: set[nn.Module] = set()
    counted: set[int] = set()  # parameter ids, so a tensor shared by two modules is counted once

    def new_params(module: nn.Module) -> int:
        fresh = [p for p in module.parameters() if id(p) not in counted]
        counted.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    def hook(module: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        first_call = module not in called
        called.add(module)
        in_t, out_t = _first_tensor(inp), _first_tensor(out)
        params = macs = bn = 0
        if hasattr(module, "prunekit_cost"):
            reported = module.prunekit_cost(inp, out)
            params, macs = int(reported[0]), int(reported[1])
        elif isinstance(module, _BN):
            bn = new_params(module) if first_call else 0
        elif isinstance(module, (*_CONV, *_CONV_T, nn.Linear)) and out_t is not None:
            params = new_params(module) if first_call else 0
            macs = _leaf_macs(module, inp, out_t, batch)
        rows.append(
            LayerCost(
                name=names[module],
                type=type(module).__name__,
                input_shape=tuple(in_t.shape[1:]) if in_t is not None else (),
                output_shape=tuple(out_t.shape[1:]) if out_t is not None else (),
                params=params if first_call else 0,
                macs=macs,
                bn_params=bn,
            )
        )

    device, dtype = _device_and_dtype(model)
    example = torch.zeros(shape, device=device, dtype=dtype)
    probe(model, example, [m.register_forward_hook(hook) for m in hooked])

    return Cost(
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
        bn_params=sum(r.bn_params for r in rows),
        total_params=sum(p.numel() for p in model.parameters()),
        layers=tuple(rows),
        input_shape=shape[1:],
    )
