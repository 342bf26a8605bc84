"""Metrics that would catch a wrong convention: closed forms, an independent formula, the two RMSEs."""

import numpy as np
import pytest

from pipeline_src.evaluate.metrics import (aggregate, block_bootstrap_indices, cell_area_weights, cell_edges,
                                           decorrelation_lag, holm, paired_rmse_difference, per_init)
from pipeline_src.evaluate.scorecard import verdict

LAT = -87.1875 + 5.625 * np.arange(32)  # the WeatherBench 5.625 deg grid


def _fields(seed=0, n=6):
    rng = np.random.default_rng(seed)
    clim = rng.normal(280, 10, (n, 32, 64))
    truth = clim + rng.normal(0, 2, (n, 32, 64))
    forecast = clim + 0.5 * (truth - clim) + rng.normal(0, 1, (n, 32, 64))
    return forecast, truth, clim


def test_weights_are_cell_areas_and_equal_cos_latitude():
    w = cell_area_weights(LAT)
    edges = np.deg2rad(-90 + 5.625 * np.arange(33))  # written out: the grid's cell edges
    area = np.sin(edges[1:]) - np.sin(edges[:-1])
    np.testing.assert_allclose(w, area / area.mean(), atol=1e-12, rtol=0)
    cos = np.cos(np.deg2rad(LAT))
    # sin(phi + h) - sin(phi - h) = 2 sin(h) cos(phi): on cell centres the two agree to rounding
    assert np.abs(w - cos / cos.mean()).max() < 1e-12
    assert w.mean() == pytest.approx(1.0, abs=1e-14)
    # descending latitudes (the CDS order) give the same weights reversed
    np.testing.assert_allclose(cell_area_weights(LAT[::-1]), w[::-1], atol=1e-12)
    np.testing.assert_allclose(cell_edges(LAT)[[0, -1]], [-90, 90])


def test_weights_with_poles_differ_from_cos_latitude():
    lat = np.linspace(-90, 90, 33)  # pole-inclusive grid: half cells at the poles
    w = cell_area_weights(lat)
    assert w[0] > 0 and w[0] == pytest.approx(w[-1])  # cos(90) would give the poles zero weight
    cos = np.cos(np.deg2rad(lat))
    assert np.abs(w - cos / cos.mean()).max() > 1e-3


def test_perfect_forecast_climatology_and_constant_bias():
    forecast, truth, clim = _fields()
    w = cell_area_weights(LAT)
    perfect = aggregate(per_init(truth, truth, clim, w), axis=0)
    assert perfect["rmse"] == 0 and perfect["rmse_climax"] == 0 and perfect["bias"] == 0
    assert perfect["acc"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["pearson"] == pytest.approx(1.0, abs=1e-12)
    climatology = per_init(clim, truth, clim, w)
    np.testing.assert_array_equal(climatology["acc"], 0.0)  # stated rule: no anomaly -> ACC 0
    for b in (0.7, -2.5):
        biased = aggregate(per_init(truth + b, truth, clim, w), axis=0)
        assert biased["rmse"] == pytest.approx(abs(b), rel=1e-12)
        assert biased["rmse_climax"] == pytest.approx(abs(b), rel=1e-12)
        assert biased["bias"] == pytest.approx(b, rel=1e-12)
        assert biased["pearson"] == pytest.approx(1.0, abs=1e-12)  # a shift keeps the pattern


def test_activity_is_the_anomaly_amplitude_over_the_truths():
    forecast, truth, clim = _fields(seed=5)
    w = cell_area_weights(LAT)
    assert aggregate(per_init(truth, truth, clim, w), axis=0)["activity"] == pytest.approx(1.0, rel=1e-12)
    assert aggregate(per_init(clim, truth, clim, w), axis=0)["activity"] == 0.0
    for k in (0.25, 2.0):  # damped toward (or blown up away from) climatology by k: activity k, ACC unchanged
        scaled = aggregate(per_init(clim + k * (truth - clim), truth, clim, w), axis=0)
        assert scaled["activity"] == pytest.approx(k, rel=1e-12)
        assert scaled["acc"] == pytest.approx(1.0, abs=1e-12)
    # over inits: the ratio of the mean powers, not the mean of per-init ratios
    per = per_init(forecast, truth, clim, w)
    expected = np.sqrt(per["forecast_power"].mean() / per["truth_power"].mean())
    assert aggregate(per, axis=0)["activity"] == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(np.sqrt(per["forecast_power"] / per["truth_power"]).mean(), rel=1e-6)


def test_against_an_independent_formula():
    forecast, truth, clim = _fields(seed=3)
    w = cell_area_weights(LAT)
    per = per_init(forecast, truth, clim, w)
    w2 = np.broadcast_to(w[:, None], (32, 64))
    for t in range(forecast.shape[0]):
        f, o, c = forecast[t], truth[t], clim[t]
        mse = np.average((f - o) ** 2, weights=w2)
        fa, oa = f - c, o - c
        acc = np.sum(w2 * fa * oa) / np.sqrt(np.sum(w2 * fa**2) * np.sum(w2 * oa**2))
        fm, om = np.average(f, weights=w2), np.average(o, weights=w2)
        r = np.average((f - fm) * (o - om), weights=w2) / np.sqrt(
            np.average((f - fm) ** 2, weights=w2) * np.average((o - om) ** 2, weights=w2))
        assert per["mse"][t] == pytest.approx(mse, rel=1e-12)
        assert per["acc"][t] == pytest.approx(acc, rel=1e-12)
        assert per["bias"][t] == pytest.approx(np.average(f - o, weights=w2), rel=1e-9)
        assert per["pearson"][t] == pytest.approx(r, rel=1e-12)
        assert per["forecast_power"][t] == pytest.approx(np.average(fa**2, weights=w2), rel=1e-12)
        assert per["truth_power"][t] == pytest.approx(np.average(oa**2, weights=w2), rel=1e-12)
    # ACC keeps the spatial mean of the anomalies (WB2): removing it changes the number here
    fa, oa = forecast - clim + 1.0, truth - clim + 1.0
    with_mean = per_init(clim + fa, clim + oa, clim, w)["acc"]
    fd = fa - np.average(fa, axis=(1, 2), weights=w2)[:, None, None]
    od = oa - np.average(oa, axis=(1, 2), weights=w2)[:, None, None]
    removed = (w2 * fd * od).sum((1, 2)) / np.sqrt((w2 * fd**2).sum((1, 2)) * (w2 * od**2).sum((1, 2)))
    assert np.abs(with_mean - removed).max() > 1e-3


def test_the_two_rmse_conventions():
    # one init with error 1 everywhere, one with error 3: WB2 sqrt(mean MSE) = sqrt(5), ClimaX mean RMSE = 2
    truth = np.zeros((2, 32, 64))
    forecast = np.stack([np.ones((32, 64)), np.full((32, 64), 3.0)])
    agg = aggregate(per_init(forecast, truth, truth, cell_area_weights(LAT)), axis=0)
    assert agg["rmse"] == pytest.approx(np.sqrt(5.0), rel=1e-12)
    assert agg["rmse_climax"] == pytest.approx(2.0, rel=1e-12)
    assert agg["mse"] == pytest.approx(5.0, rel=1e-12)
    # with equal per-init errors they coincide
    same = aggregate(per_init(forecast[:1].repeat(2, 0), truth, truth, cell_area_weights(LAT)), axis=0)
    assert same["rmse"] == pytest.approx(same["rmse_climax"], rel=1e-12)


def test_block_bootstrap_and_paired_difference():
    idx = block_bootstrap_indices(20, 500, 4, seed=1)
    assert idx.shape == (500, 20) and idx.min() >= 0 and idx.max() < 20
    steps = np.diff(idx, axis=1) % 20
    assert (steps[:, 0:3] == 1).all()  # the first block is 4 consecutive (circular) inits
    rng = np.random.default_rng(0)
    mse_b = rng.uniform(1, 2, (3, 20))
    same = paired_rmse_difference(mse_b, mse_b, idx)
    np.testing.assert_array_equal(same["diff"], 0.0)
    np.testing.assert_array_equal(same["low"], 0.0)
    np.testing.assert_array_equal(same["high"], 0.0)
    worse = paired_rmse_difference(mse_b * 1.5, mse_b, idx)
    assert (worse["low"] > 0).all() and (worse["low"] <= worse["diff"]).all() and (worse["diff"] <= worse["high"]).all()
    assert verdict({"low": -1, "high": -0.1}) == "better" and verdict({"low": 0.1, "high": 1}) == "worse"
    assert verdict({"low": -0.1, "high": 0.1}) == "no significant difference"
    assert (same["p"] == 1.0).all() and (worse["p"] < 0.01).all()
    assert verdict({"low": -1, "high": -0.1, "holm": False}) == "no significant difference"  # Holm overrules


def test_decorrelation_lag_of_an_ar1_series():
    """An AR(1) series with coefficient phi correlates phi**k at lag k: below 0.1 from
    ceil(log 0.1 / log phi) on (22 for phi 0.9, 2 for phi 0.3); white noise at lag 1."""
    rng = np.random.default_rng(0)
    for phi, expected in ((0.9, 22), (0.3, 2)):
        x = np.zeros(200_000)
        eps = rng.normal(size=x.size)
        for t in range(1, x.size):
            x[t] = phi * x[t - 1] + eps[t]
        assert abs(decorrelation_lag(x) - expected) <= 1, phi
    assert decorrelation_lag(rng.normal(size=5000)) == 1
    assert decorrelation_lag(np.ones(10)) == 1  # no variance: no memory to span


def test_holm_step_down():
    """Holm at 0.05 over four p-values: 0.01 <= 0.05/4, 0.012 <= 0.05/3, 0.04 > 0.05/2 stops it."""
    assert holm([0.04, 0.01, 0.3, 0.012], 0.05) == [False, True, False, True]
    assert holm([0.02, 0.03], 0.05) == [True, True]  # 0.02 <= 0.025, then 0.03 <= 0.05
    assert holm([], 0.05) == []
