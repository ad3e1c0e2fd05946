"""The training loss: cross-entropy with optional label smoothing, or Hinton knowledge distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def training_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    label_smoothing: float = 0.0,
    teacher_logits: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Mean loss over the batch. With a teacher: `alpha·T²·KL(p_teacher ‖ p_student) + (1 − alpha)·CE`,
    both distributions softened by temperature T; T² keeps the soft-target gradients on the CE scale."""
    return training_losses(
        logits,
        targets,
        label_smoothing=label_smoothing,
        teacher_logits=teacher_logits,
        temperature=temperature,
        alpha=alpha,
    )[0]


def training_losses(
    logits: Tensor,
    targets: Tensor,
    *,
    label_smoothing: float = 0.0,
    teacher_logits: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> tuple[Tensor, Tensor | None]:
    """`training_loss` and, with a teacher, its distillation term `T²·KL` alone (the log reports it)."""
    logits = logits.float()  # bf16 autocast logits: take the softmax in fp32
    ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return ce, None
    t = temperature
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    kd = t * t * kl
    return alpha * kd + (1.0 - alpha) * ce, kd
