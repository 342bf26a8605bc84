"""The synthetic source: real CDS layouts, deterministic, with learnable structure."""

from types import SimpleNamespace

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline_src.era5.channels import G
from pipeline_src.era5.synthetic import SyntheticERA5, standard_height, write_synthetic
from tests.conftest import load_nc, load_raw, small_config


def test_new_cds_layout(raw_files):
    with netCDF4.Dataset(raw_files[("pressure", "2010")]) as nc:
        assert nc.file_format == "NETCDF4"
        assert list(nc.dimensions) == ["valid_time", "pressure_level", "latitude", "longitude"]
        assert nc["valid_time"].units == "seconds since 1970-01-01"
        assert nc["z"].dimensions == ("valid_time", "pressure_level", "latitude", "longitude")
        assert nc["z"].dtype == np.float32
        assert nc["latitude"][0] == 90 and nc["latitude"][-1] == -90
        assert list(nc["pressure_level"][:]) == [850, 500]  # CDS order: descending hPa
        assert set(nc.variables) >= {"number", "expver", "z", "t", "u", "q"}
    with netCDF4.Dataset(raw_files[("single", "2010")]) as nc:
        assert set(nc.variables) >= {"t2m", "u10"}


def test_old_layout_is_packed_and_decodes_to_the_same_fields(tmp_path):
    cfg_new, cfg_old = small_config(), small_config(synthetic={"seed": 3, "layout": "old"})
    need = cfg_new.required["pressure"]
    write_synthetic(tmp_path / "new.nc", "pressure", "2010", need, cfg_new.era5)
    write_synthetic(tmp_path / "old.nc", "pressure", "2010", need, cfg_old.era5)
    with netCDF4.Dataset(tmp_path / "old.nc") as nc:
        assert nc.file_format == "NETCDF3_64BIT_OFFSET"
        assert "time" in nc.dimensions and "level" in nc.dimensions
        assert nc["t"].dtype == np.int16 and hasattr(nc["t"], "scale_factor")
        assert nc["time"].units.startswith("hours since 1900-01-01")
    a = load_raw(tmp_path / "new.nc", "pressure", need, 10.0, [0], "2010")
    b = load_raw(tmp_path / "old.nc", "pressure", need, 10.0, [0], "2010")
    for var, tol in (("z", 3.0), ("t", 0.01), ("u", 0.01), ("q", 1e-6)):
        np.testing.assert_allclose(b[var].values, a[var].values, atol=tol, rtol=0)


def test_deterministic_and_seeded(tmp_path, cfg):
    need = cfg.required["single"]
    write_synthetic(tmp_path / "a.nc", "single", "2011", need, cfg.era5)
    write_synthetic(tmp_path / "b.nc", "single", "2011", need, cfg.era5)
    other = small_config(synthetic={"seed": 4})
    write_synthetic(tmp_path / "c.nc", "single", "2011", need, other.era5)
    a, b, c = (load_nc(tmp_path / f"{n}.nc") for n in "abc")
    xr.testing.assert_identical(a.t2m, b.t2m)
    assert float(abs(a.t2m - c.t2m).max()) > 1.0


def test_year_files_join_up_as_one_series():
    # amplitudes come from one series from the epoch, so Dec 31 -> Jan 1 is continuous
    gen = SyntheticERA5(seed=1, grid_deg=10.0)
    times = pd.date_range("2010-12-30", "2011-01-02", freq="6h")
    w, _, _ = gen.waves(times, shift=0.0)
    steps = np.abs(np.diff(w, axis=0)).max(axis=(1, 2))
    assert steps.max() < 3 * np.median(steps)


def test_physical_structure():
    gen = SyntheticERA5(seed=0, grid_deg=5.0)
    times = pd.date_range("2010-01-01", "2010-12-31", freq="D")
    f500, f850 = gen.level_fields(times, 500.0), gen.level_fields(times, 850.0)
    # geopotential near the standard atmosphere, increasing with height everywhere
    assert abs(f500["z"].mean() / G - standard_height(500)) < 300
    assert (f500["z"] > f850["z"]).all()
    # seasonal cycle of opposite sign in the hemispheres (850 hPa temperature)
    north, south = gen.lat > 30, gen.lat < -30
    jan, jul = slice(0, 31), slice(181, 212)
    t = f850["t"]
    assert t[jul][:, north].mean() - t[jan][:, north].mean() > 5
    assert t[jan][:, south].mean() - t[jul][:, south].mean() > 5
    # meridional gradient: tropics warmer than poles
    assert t[:, np.abs(gen.lat) < 20].mean() - t[:, np.abs(gen.lat) > 60].mean() > 15
    # vertical coherence: the wave anomalies of z500 and z850 correlate
    a500 = f500["z"] - f500["z"].mean(axis=(0, 2), keepdims=True)
    a850 = f850["z"] - f850["z"].mean(axis=(0, 2), keepdims=True)
    mid = (np.abs(gen.lat) > 30) & (np.abs(gen.lat) < 60)
    assert np.corrcoef(a500[:, mid].ravel(), a850[:, mid].ravel())[0, 1] > 0.7
    # eastward propagation: tomorrow's anomaly matches today's shifted east, not west
    row = a500[:, np.argmin(np.abs(gen.lat - 45))]
    east = np.mean([np.corrcoef(row[i + 1], np.roll(row[i], 1))[0, 1] for i in range(200)])
    west = np.mean([np.corrcoef(row[i + 1], np.roll(row[i], -1))[0, 1] for i in range(200)])
    assert east > west + 0.05
    # predictability decays with lead time (AR(1) amplitudes): lag-1 >> lag-30 autocorrelation
    lag = {k: np.mean([np.corrcoef(row[i], row[i + k])[0, 1] for i in range(300)]) for k in (1, 30)}
    assert lag[1] > 0.6 and abs(lag[30]) < 0.3


def test_humidity_positive_and_winds_sane():
    gen = SyntheticERA5(seed=2, grid_deg=5.0)
    times = pd.date_range("2015-06-01", periods=20, freq="D")
    rng = np.random.default_rng(0)
    p = gen.pressure_chunk(times, [1000, 500, 50], ["q", "u", "v"], rng)
    assert (p["q"] > 0).all() and p["q"].max() < 0.05
    assert np.abs(p["u"]).max() < 120 and np.abs(p["v"]).max() < 120


TRAIN_YEARS = (2010, 2011, 2012, 2013)


@pytest.fixture(scope="module")
def z500_years():
    """The default's z500 (seed 0) on the 5.625 deg grid without a pole, as anomalies from the
    training years' climatology (61-day window): the generator, the cell-area weights, and the
    days, fields (t, lat, lon) and climatology at those days of the test year and the training years."""
    from pipeline_src.era5.assemble import ClimatologyAccumulator
    from pipeline_src.evaluate.metrics import cell_area_weights

    gen = SyntheticERA5(seed=0, grid_deg=5.625)

    def z500(year):
        times = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
        rng = np.random.default_rng([0, year])
        return times, gen.pressure_chunk(times, [500], ["z"], rng)["z"][:, :, 1:]  # (t, 1, lat, lon) without a pole

    acc = ClimatologyAccumulator([0], (1, gen.lat.size - 1, gen.lon.size))
    years = {year: z500(year) for year in (*TRAIN_YEARS, 2015)}
    for year in TRAIN_YEARS:
        acc.update(*years[year])
    clim = acc.result(61)[:, 0, 0]  # (day of year, lat, lon) of the one hour and level

    def split(*names):
        times = pd.DatetimeIndex(np.concatenate([years[y][0] for y in names]))
        fields = np.concatenate([years[y][1][:, 0] for y in names])
        return times, fields, clim[np.asarray(times.day_of_year) - 1]

    return SimpleNamespace(gen=gen, w=cell_area_weights(gen.lat[1:]), test=split(2015), train=split(*TRAIN_YEARS))


def test_predictability_and_variance_like_era5_z500(z500_years):
    """z500 anomalies of the default's test year (seed 0, training years 2010-2013, 61-day
    climatology, every 5th day) against ERA5's: persistence ACC about 0.9 at 1 day, 0.25-0.4 at 7,
    below 0.2 at 14; anomaly variance growing from the tropics to 60-70 deg and still large over
    the poles; little of it in the zonal mean."""
    from pipeline_src.evaluate.metrics import aggregate, per_init

    gen, w = z500_years.gen, z500_years.w
    times, test, c = z500_years.test
    skill = {}
    for lead in (1, 7, 14, 30):
        init = np.arange(0, len(times) - lead, 5)
        skill[lead] = float(aggregate(per_init(test[init], test[init + lead], c[init + lead], w))["acc"])
    print("persistence ACC", skill)
    assert 0.85 <= skill[1] <= 0.95 and 0.25 <= skill[7] <= 0.4 and skill[14] < 0.2 and abs(skill[30]) < 0.15, skill
    anomaly = test - c
    rms = np.sqrt((anomaly ** 2).mean(axis=(0, 2)))
    lat = np.abs(gen.lat[1:])
    band = {name: rms[(lat >= lo) & (lat <= hi)].mean() for name, lo, hi in
            (("tropics", 0, 20), ("40-50", 40, 50), ("60-70", 60, 70), ("polar", 75, 90))}
    print("anomaly RMS by latitude band", band)
    assert band["tropics"] < 0.25 * band["40-50"] < band["40-50"] < band["60-70"], band
    assert band["polar"] > 0.7 * band["40-50"], band
    zonal = anomaly.mean(axis=2, keepdims=True)
    share = float((w[:, None] * zonal ** 2).mean() / (w[:, None] * anomaly ** 2).mean())
    print("zonal-mean share", share)
    assert share < 0.15, share  # the annular mode is a part, not a third


def test_a_forecaster_can_beat_damped_persistence_as_on_era5(z500_years):
    """The generator's own best forecast from one time step (each wave's amplitude shrunk by its
    autocorrelation, moved on at its speed) against damped persistence fitted on the training
    years, on the test year's z500, every 5th day: like a good forecast of ERA5 it keeps an ACC of
    0.55-0.8 at 7 days and 0.2-0.45 at 14 and loses most of it within a month, and it beats damped
    persistence by at least 15% RMSE at 7 days and 4% at 14. A scorecard on this atmosphere can
    tell a forecaster that learned the flow from one that learned only how fast anomalies decay."""
    from pipeline_src.evaluate.metrics import aggregate, per_init

    gen, w = z500_years.gen, z500_years.w
    times, test, c = z500_years.test
    _, train, train_c = z500_years.train
    weights = w[None, :, None]
    skill = {}
    for lead in (7, 14, 30):
        a0, a1 = train[:-lead] - train_c[:-lead], train[lead:] - train_c[lead:]  # days are consecutive
        alpha = float((weights * a0 * a1).sum() / (weights * a0 * a0).sum())
        init = np.arange(0, len(times) - lead, 5)
        truth, clim = test[init + lead], c[init + lead]
        damped = clim + alpha * (test[init] - c[init])
        best = gen.level_fields(times[init + lead], 500.0, init=times[init])["z"][:, 1:]
        scores = {name: aggregate(per_init(fc, truth, clim, w)) for name, fc in (("damped", damped), ("best", best))}
        skill[lead] = {name: {k: round(float(s[k]), 3) for k in ("rmse", "acc")} for name, s in scores.items()}
        skill[lead]["alpha"] = round(alpha, 3)
    print("best forecast and damped persistence", skill)
    assert 0.55 <= skill[7]["best"]["acc"] <= 0.8 and 0.2 <= skill[14]["best"]["acc"] <= 0.45, skill
    assert abs(skill[30]["best"]["acc"]) < 0.2, skill
    assert skill[7]["best"]["rmse"] < 0.85 * skill[7]["damped"]["rmse"], skill
    assert skill[14]["best"]["rmse"] < 0.96 * skill[14]["damped"]["rmse"], skill
    assert skill[30]["best"]["rmse"] < 1.01 * skill[30]["damped"]["rmse"], skill
