"""What models read, shared by training and evaluation: batches, seeded sampling, ERA5 and spectral data.

Stages meet in files: these classes only read what the era5 and hyperspectral stages wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def step_generator(seed: int, step: int, micro: int, salt: int = 0) -> torch.Generator:
    """A torch Generator determined by (seed, step, micro-step, salt)."""
    mixed = np.random.SeedSequence([seed, step, micro, salt]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(mixed[0] % (2**63)))


@dataclass
class Batch:
    """One micro-batch for this rank: inputs, targets, and the task's extra input (lead or mask)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    lead_days: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    plant: torch.Tensor | None = None  # MAE: (B, H, W) plant pixels
