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
    logits = logits.float()  # bf16 autocast logits: take the softmax in fp32
    ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1.0 - alpha) * ce
