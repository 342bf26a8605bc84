"""Damped anomaly persistence: the initial anomaly, shrunk toward climatology by one coefficient
per variable and lead fitted on the training years.

forecast(t0 + L) = climatology(t0 + L) + alpha[v, L] * (x(t0) - climatology(t0)), with
alpha = sum(w a0 aL) / sum(w a0^2) over the training split's initialisation times and grid
cells (w: the scorecard's cell-area weights), i.e. the least-squares damping under the
WB2 MSE. Climatology (alpha 0) and persistence (alpha 1 on the anomalies, and the raw
field persisted) are its two ends; a model that cannot beat it has learned no more than
how fast anomalies decay.
"""

from __future__ import annotations

import numpy as np

from ..io import InputError


def fit_damping(data, lead_days: list[float], targets: list[str], stride: int = 1, batch: int = 64) -> dict:
    """alpha per target and lead from a VerificationData on the training split, with what it was fitted on."""
    idx = data.target_indices(targets)
    inits, steps = data.init_indices(lead_days, stride)
    if not inits:
        raise InputError(data.split.store, f"no initialisation time of the split reaches {max(lead_days):g} days")
    w = np.asarray(data.weights, np.float64)[:, None]  # (lat, 1): broadcast over longitude

    def anomaly(times: list[int]) -> np.ndarray:  # (n, V, H, W): only the targets are read
        return (data.split.read(times, idx) - data.climatology.at(data.times[times], idx)).astype(np.float64)

    cross = np.zeros((len(steps), len(idx)))
    power = np.zeros(len(idx))
    for lo in range(0, len(inits), batch):
        chunk = inits[lo:lo + batch]
        a0 = anomaly(chunk)
        power += (w * a0 * a0).sum(axis=(0, 2, 3))
        for li, step in enumerate(steps):
            cross[li] += (w * a0 * anomaly([i + step for i in chunk])).sum(axis=(0, 2, 3))
    alpha = np.divide(cross, power[None], out=np.zeros_like(cross), where=power[None] > 0)
    times = data.times[inits]
    return {"coefficients": {t: [float(alpha[li, vi]) for li in range(len(steps))] for vi, t in enumerate(targets)},
            "lead_days": [float(d) for d in lead_days], "fitted_on": "train", "n_inits": len(inits),
            "first_init": str(times[0])[:19], "last_init": str(times[-1])[:19], "init_stride": stride}


def damped_forecast(x: np.ndarray, clim_x: np.ndarray, clim: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(n, lead, V, H, W) forecasts from the targets' initial fields and climatology (n, V, H, W),
    the valid times' climatology (n, lead, V, H, W) and alpha (lead, V)."""
    return clim + alpha[None, :, :, None, None] * (x - clim_x)[:, None]


def coefficient_array(fit: dict, targets: list[str], lead_days: list[float]) -> np.ndarray:
    """alpha (lead, V) for these targets and leads; InputError if the fit does not cover them."""
    if [float(d) for d in lead_days] != fit["lead_days"] or any(t not in fit["coefficients"] for t in targets):
        raise InputError(None, f"the damping was fitted for {sorted(fit['coefficients'])} at {fit['lead_days']} days, "
                               f"not {targets} at {lead_days}")
    return np.array([fit["coefficients"][t] for t in targets], np.float64).T
