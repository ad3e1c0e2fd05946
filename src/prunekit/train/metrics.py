"""Correct-prediction counts kept on the device, so a loop syncs with the host once per report."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose target is among the top-k logits, one count per k (k capped at #classes)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # sorted, so the first k columns are the top-k
    hits = (top == targets[:, None]).cumsum(dim=1)
    return torch.stack([hits[:, min(k, k_max) - 1].sum() for k in ks])
