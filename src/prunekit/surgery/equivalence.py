"""Whether an edited model still computes what the original did: the one output comparison every edit
that claims exactness (dead-channel removal, constant folding) is checked with.

Both models run in eval mode without autograd on the same inputs (every module's train/eval flag is
restored afterwards). The outputs match when ``torch.allclose(candidate, reference, rtol, atol)`` with
``atol = atol_scale · max(1, max |reference|)``: relative to the output's magnitude for large logits,
absolute below 1 so that outputs near zero are not held to round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunekit.errors import SurgeryError
from prunekit.models.probe import evaluating

RTOL = 1e-4
ATOL_SCALE = 1e-5


@dataclass(frozen=True)
class OutputComparison:
    """The outcome of running two models on the same inputs."""

    same: bool
    max_difference: float  # largest absolute difference of the outputs (inf when the shapes differ)
    reference_shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]

    def describe(self) -> str:
        if self.candidate_shape != self.reference_shape:
            return f"output shape {self.candidate_shape} instead of {self.reference_shape}"
        return f"max difference {self.max_difference:.3g}"


def compare_outputs(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Tensor,
    *,
    rtol: float = RTOL,
    atol_scale: float = ATOL_SCALE,
) -> OutputComparison:
    """Run both models on `inputs` and compare the outputs (see the module docstring for the tolerance)."""
    with evaluating(reference, candidate), torch.no_grad():
        expected, got = reference(inputs), candidate(inputs)
    shapes = (tuple(expected.shape), tuple(got.shape))
    if got.shape != expected.shape:  # allclose would broadcast, or fail with torch's own message
        return OutputComparison(False, float("inf"), *shapes)
    if not expected.numel():
        return OutputComparison(True, 0.0, *shapes)
    gap = float((got - expected).abs().max())
    atol = atol_scale * max(1.0, float(expected.abs().max()))
    return OutputComparison(bool(torch.allclose(got, expected, rtol=rtol, atol=atol)), gap, *shapes)


def check_same_outputs(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Tensor,
    *,
    what: str,
    hint: str = "",
    rtol: float = RTOL,
    atol_scale: float = ATOL_SCALE,
) -> None:
    """Raise `SurgeryError` unless `candidate` computes `reference`'s outputs on `inputs`.

    The message reads ``"{what} changed the model's outputs (max difference {gap:.3g}); {hint}"`` (or names
    both output shapes if they differ): `what` names the edit (e.g. ``"removing the dead channels of conv1,
    conv2"``), `hint` the likely cause or what to do (left out when empty)."""
    result = compare_outputs(reference, candidate, inputs, rtol=rtol, atol_scale=atol_scale)
    if not result.same:
        message = f"{what} changed the model's outputs ({result.describe()})"
        raise SurgeryError(f"{message}; {hint}" if hint else message)
