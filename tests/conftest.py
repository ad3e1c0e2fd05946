"""Shared fixtures. Real MNIST/Fashion-MNIST live in ../shared/data beside the checkout (CI has it too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# CLI options for a small synthetic 1×28×28 dataset (LeNet-sized): 256 training and 128 test images.
SYNTHETIC_28 = (
    "--data synthetic --data-option shape=1x28x28 --limit-train 256 --limit-test 128 "
    "--batch-size 64 --device cpu"
).split()

# Test models are tiny: extra intra-op threads only add contention (CI has 2 cores, DDP tests run 2 ranks).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root holding `mnist/` and `fashion-mnist/` IDX gz files (byte-exact official copies)."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.fail(f"real MNIST expected at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
