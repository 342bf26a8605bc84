"""Forecast verification metrics in WeatherBench2 conventions (and the ClimaX RMSE beside them).

Per initialisation time, on a (..., latitude, longitude) field:
  MSE      weighted spatial mean of (f - o)^2
  bias     weighted spatial mean of (f - o)
  ACC      sum w f'o' / sqrt(sum w f'^2 * sum w o'^2) with f' = f - c, o' = o - c against the
           day-of-year x hour climatology c; the spatial mean is not removed (WB2). A forecast
           with no anomaly at all (f' = 0 everywhere, e.g. the climatology itself) has ACC 0 by
           the rule stated in CONVENTIONS, not 0/0.
  pearson  weighted Pearson correlation of f and o over the grid (spatial means removed)
  forecast_power, truth_power  weighted spatial means of f'^2 and o'^2
Over initialisation times:
  rmse         sqrt(mean of MSE)          (WB2, ECMWF: the headline)
  rmse_climax  mean of sqrt(MSE)          (ClimaX and the D-CHAG authors' per-sample RMSE)
  mse, acc, bias: means over initialisation times; pearson: mean over the inits where it is
  defined (a constant field has none).
  activity     sqrt(mean forecast_power / mean truth_power): the forecast anomalies' amplitude
               over the truth's (ECMWF's anomaly "activity", as a ratio). 1 is as active as the
               truth, 0 is climatology; the MSE-best forecast is damped to about its ACC.
Weights are cell areas (sin of the upper cell edge minus sin of the lower), normalised to
mean 1; on a regular grid of cell centres they equal cos(latitude) normalised.
"""

from __future__ import annotations

import warnings

import numpy as np

PER_INIT = ("mse", "acc", "bias", "pearson", "forecast_power", "truth_power")
AGGREGATES = ("rmse", "rmse_climax", "mse", "acc", "bias", "pearson", "activity")
CONVENTION = {
    "rmse": "wb2: sqrt(mean over inits of area-weighted MSE)",
    "rmse_climax": "climax: mean over inits of sqrt(area-weighted MSE)",
    "mse": "wb2: mean over inits of area-weighted MSE",
    "acc": "wb2: per-init area-weighted ACC vs training doy x hour climatology, spatial mean kept, "
           "then mean; a forecast without anomaly scores 0",
    "bias": "wb2: mean over inits of area-weighted mean error (forecast - truth)",
    "pearson": "mean over inits of area-weighted Pearson correlation (spatial means removed)",
    "activity": "sqrt(mean over inits of area-weighted forecast anomaly^2 / same of the truth's), "
                "anomalies from the training climatology; 1 = as active as the truth, 0 = climatology",
}
CONVENTIONS = ("Area weights: sin(upper cell edge) - sin(lower cell edge), mean 1. "
               "rmse = sqrt(mean_t MSE_t) (WeatherBench2); rmse_climax = mean_t sqrt(MSE_t) (ClimaX). "
               "ACC per initialisation time against the training-years day-of-year x hour "
               "climatology, spatial mean not removed, then averaged; ACC of a forecast with zero "
               "anomaly (the climatology) is 0. activity = sqrt(mean_t forecast anomaly power / mean_t "
               "truth anomaly power): 1 as active as the truth, 0 climatology, too damped well below the "
               "ACC. Physical units.")


def cell_edges(latitudes) -> np.ndarray:
    """Latitude cell edges (degrees) of a regular grid of centres: midpoints, outer edges clipped to +-90."""
    lat = np.asarray(latitudes, dtype=np.float64)
    if lat.size < 2:
        raise ValueError("need at least two latitudes")
    mids = (lat[1:] + lat[:-1]) / 2
    first = lat[0] - (mids[0] - lat[0])
    last = lat[-1] + (lat[-1] - mids[-1])
    return np.clip(np.concatenate([[first], mids, [last]]), -90.0, 90.0)


def cell_area_weights(latitudes) -> np.ndarray:
    """Area of each latitude band (sin upper edge - sin lower edge), normalised to mean 1."""
    edges = np.deg2rad(cell_edges(latitudes))
    w = np.abs(np.sin(edges[1:]) - np.sin(edges[:-1]))
    return w / w.mean()


def _wmean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over the last two axes (latitude, longitude) with latitude weights w (mean 1)."""
    return (x * w[:, None]).mean(axis=(-2, -1))


def per_init(forecast: np.ndarray, truth: np.ndarray, climatology: np.ndarray,
             weights: np.ndarray) -> dict[str, np.ndarray]:
    """MSE, ACC, bias, Pearson and anomaly powers of (..., lat, lon) fields, one value per leading index (float64)."""
    f = np.asarray(forecast, dtype=np.float64)
    o = np.asarray(truth, dtype=np.float64)
    c = np.asarray(climatology, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    err = f - o
    fa, oa = f - c, o - c
    num = _wmean(fa * oa, w)
    ff, oo = _wmean(fa * fa, w), _wmean(oa * oa, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(ff > 0, num / np.sqrt(ff * oo), 0.0)
        fd = f - _wmean(f, w)[..., None, None]
        od = o - _wmean(o, w)[..., None, None]
        pearson = _wmean(fd * od, w) / np.sqrt(_wmean(fd * fd, w) * _wmean(od * od, w))
    return {"mse": _wmean(err * err, w), "acc": acc, "bias": _wmean(err, w), "pearson": pearson,
            "forecast_power": ff, "truth_power": oo}


def aggregate(per: dict[str, np.ndarray], axis: int = -1) -> dict[str, np.ndarray]:
    """Per-init metrics (init along `axis`) -> rmse, rmse_climax, mse, acc, bias, pearson, activity."""
    mse = np.asarray(per["mse"], dtype=np.float64)
    pearson = np.asarray(per["pearson"], dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():  # constant fields: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        pearson_mean = np.nanmean(pearson, axis=axis)
    return {
        "rmse": np.sqrt(mse.mean(axis=axis)),
        "rmse_climax": np.sqrt(mse).mean(axis=axis),
        "mse": mse.mean(axis=axis),
        "acc": np.asarray(per["acc"]).mean(axis=axis),
        "bias": np.asarray(per["bias"]).mean(axis=axis),
        "pearson": pearson_mean,
        "activity": np.sqrt(np.asarray(per["forecast_power"]).mean(axis=axis)
                            / np.asarray(per["truth_power"]).mean(axis=axis)),
    }


def block_bootstrap_indices(n: int, samples: int, block: int, seed: int) -> np.ndarray:
    """(samples, n) indices of a circular block bootstrap over n serially correlated times."""
    rng = np.random.default_rng(seed)
    block = max(1, min(block, n))
    blocks = -(-n // block)
    starts = rng.integers(0, n, size=(samples, blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return idx.reshape(samples, -1)[:, :n]


def paired_rmse_difference(mse_a: np.ndarray, mse_b: np.ndarray, indices: np.ndarray,
                           level: float = 0.95) -> dict[str, np.ndarray]:
    """RMSE(a) - RMSE(b) over inits (last axis) with a paired bootstrap interval (same resampled inits)
    and the bootstrap's two-sided p-value of "no difference" (twice the smaller tail beyond 0)."""
    mse_a, mse_b = np.asarray(mse_a, np.float64), np.asarray(mse_b, np.float64)
    diff = np.sqrt(mse_a.mean(-1)) - np.sqrt(mse_b.mean(-1))
    boot = np.sqrt(mse_a[..., indices].mean(-1)) - np.sqrt(mse_b[..., indices].mean(-1))  # (..., samples)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    p = np.minimum(1.0, 2 * np.minimum((boot <= 0).mean(-1), (boot >= 0).mean(-1)))
    return {"diff": diff, "low": lo, "high": hi, "p": p}


def decorrelation_lag(series: np.ndarray, threshold: float = 0.1) -> int:
    """The first lag (in samples) at which the series' autocorrelation falls below threshold
    (the series' length when it never does)."""
    x = np.asarray(series, np.float64) - np.mean(series)
    var = float((x * x).mean())
    if var == 0 or len(x) < 3:
        return 1
    for lag in range(1, len(x)):
        if float((x[:-lag] * x[lag:]).mean()) / var < threshold:
            return lag
    return len(x)


def holm(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected
