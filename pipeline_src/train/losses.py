"""Training losses: latitude-weighted MSE for forecasts (the MAE's objective is in mae_objective)."""

from __future__ import annotations

import numpy as np
import torch

from ..model.tokenizer import patchify


def latitude_weights(latitudes) -> torch.Tensor:
    """cos(latitude) weights normalised to mean 1 (WeatherBench convention)."""
    w = np.cos(np.deg2rad(np.asarray(latitudes, dtype=np.float64)))
    return torch.as_tensor(w / w.mean(), dtype=torch.float32)


def forecast_loss(pred: torch.Tensor, target: torch.Tensor, lat_weights: torch.Tensor) -> torch.Tensor:
    """Latitude-weighted MSE over (B, V, H, W) fields."""
    w = lat_weights.to(pred.device, pred.dtype)[None, None, :, None]
    return ((pred - target) ** 2 * w).mean()


def mae_targets(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C * patch**2), the layout the MAE decoder predicts."""
    p = patchify(x, patch)  # (B, C, L, p*p)
    return p.permute(0, 2, 1, 3).reshape(p.shape[0], p.shape[2], -1)
