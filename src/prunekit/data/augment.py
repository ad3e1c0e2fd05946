"""Batched augmentation on the device: random crop with zero padding, horizontal flip, normalisation.

Every op works on a whole batch at once (strided views and batched indexing); no Python loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropFlipParams:
    """Per-image choices for one batch: crop offsets into the padded image, and which images to mirror."""

    top: torch.Tensor  # int64 (B,), in [0, 2 * padding]
    left: torch.Tensor  # int64 (B,), in [0, 2 * padding]
    flip: torch.Tensor  # bool (B,)


def draw_crop_flip(
    batch: int, padding: int, flip: bool, generator: torch.Generator, device: torch.device | str = "cpu"
) -> CropFlipParams:
    """Draw on the CPU generator (same stream whatever the device), then move the few numbers over."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    mirror = torch.rand(batch, generator=generator) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool)
    return CropFlipParams(offsets[0].to(device), offsets[1].to(device), mirror.to(device))


def crop_flip(images: torch.Tensor, padding: int, params: CropFlipParams) -> torch.Tensor:
    """Zero-pad by `padding`, take each image's HxW window at (top, left), then mirror the flagged ones."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    # All (2p+1)^2 windows as a strided view (no copy); advanced indexing then copies one window per image,
    # which is cheaper than gathering through a full-size per-pixel index tensor.
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W)
    out = windows[torch.arange(b, device=images.device), :, params.top, params.left]
    if out.device.type == "cpu":
        # On the CPU, copying only the flagged images is cheaper; on accelerators nonzero() would stall on a
        # host sync, so they take the branch-free torch.where.
        flagged = params.flip.nonzero().flatten()
        out[flagged] = out[flagged].flip(3)
        return out
    return torch.where(params.flip[:, None, None, None], out.flip(3), out)


def normalization_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (x/255 - mean)/std == x * scale - shift, shaped (1, C, 1, 1) float32."""
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, -1, 1, 1).to(device)
    shift = (mean_t / std_t).to(torch.float32).view(1, -1, 1, 1).to(device)
    return scale, shift


def normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float32 (x/255 - mean)/std in one fused multiply-add."""
    return torch.addcmul(-shift, images.to(torch.float32), scale)
