"""Regridding to the WeatherBench 5.625 deg grid: error bounds on analytic fields."""

import importlib.util

import dask
import numpy as np
import pytest
import xarray as xr

from tests.conftest import load_nc
from pipeline_src.era5.grids import cds_grid, weatherbench_grid
from pipeline_src.era5.regrid import choose_backend, regrid_dataset, regrid_file
from pipeline_src.io import ConfigError

HAS_XESMF = importlib.util.find_spec("xesmf") is not None

# Bilinear interpolation error is at most h^2/8 * (|f_xx| + |f_yy|); for the field below
# on a 1 deg grid that is 3.8e-5 * ~10 = 4e-4. Conservative regridding returns area-
# weighted cell means: compared with the exact cell means of the analytic field, the
# error comes from the 1 deg source cells straddling target cell edges and from
# xarray-regrid's approximate spherical weights (measured: <= 1.1e-3 away from the
# poles, 2.1e-3 in the two polar rows).
BILINEAR_BOUND = 5e-4
CONSERVATIVE_BOUND = 3e-3


def analytic(lat_deg, lon_deg):
    phi, lam = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    return 2 + np.sin(2 * phi) * np.cos(lam) + 0.5 * np.cos(phi) ** 2 * np.sin(3 * lam)


def field_on(lat, lon, n_time=3):
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    f = analytic(lat2, lon2)
    data = np.stack([f * (1 + 0.1 * k) for k in range(n_time)]).astype(np.float64)
    return xr.Dataset({"f": (("time", "latitude", "longitude"), data)},
                      coords={"time": np.arange(n_time), "latitude": lat, "longitude": lon})


def expected_on_target(n_time=3):
    tgt = weatherbench_grid()
    lat2, lon2 = np.meshgrid(tgt.latitude.values, tgt.longitude.values, indexing="ij")
    return np.stack([analytic(lat2, lon2) * (1 + 0.1 * k) for k in range(n_time)])


def test_target_grid_is_weatherbench():
    g = weatherbench_grid()
    assert g.sizes["latitude"] == 32 and g.sizes["longitude"] == 64
    assert g.latitude.values[0] == -87.1875 and g.latitude.values[-1] == 87.1875
    assert g.longitude.values[0] == 0 and g.longitude.values[-1] == 354.375


@pytest.mark.parametrize("backend", ["xarray-regrid"] + (["xesmf"] if HAS_XESMF else []))
def test_bilinear_error_bound_from_cds_grid(backend, tmp_path):
    lat, lon = cds_grid(1.0)
    ds = field_on(lat[::-1], lon)  # canonical: ascending latitude
    out, used = regrid_dataset(ds, backend, "bilinear", 1.0, tmp_path)
    assert used == backend and out.f.shape == (3, 32, 64)
    err = np.abs(out.f.values - expected_on_target()).max()
    assert err < BILINEAR_BOUND, err


def test_periodic_seam_with_cell_centred_source():
    # source longitudes 0.5 .. 359.5: target longitude 0 lies across the seam
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(0.5, 360, 1.0)
    out, _ = regrid_dataset(field_on(lat, lon), "xarray-regrid", "bilinear", 1.0)
    err = np.abs(out.f.values - expected_on_target())
    assert not np.isnan(out.f.values).any()
    assert err[..., 0].max() < BILINEAR_BOUND and err.max() < BILINEAR_BOUND


def exact_cell_means():
    """Area-weighted means of `analytic` over each target cell, by fine 1-D quadrature."""
    tgt = weatherbench_grid()
    n = 200
    def nodes(lo, hi):
        return lo + (hi - lo) * (np.arange(n) + 0.5) / n
    lat_b, lon_b = tgt.lat_b.values, tgt.lon_b.values
    phi = np.stack([np.deg2rad(nodes(a, b)) for a, b in zip(lat_b[:-1], lat_b[1:])])  # (32, n)
    lam = np.stack([np.deg2rad(nodes(a, b)) for a, b in zip(lon_b[:-1], lon_b[1:])])  # (64, n)
    w = np.cos(phi)
    def lat_mean(g):
        return (g * w).sum(1) / w.sum(1)
    # analytic = 2 + sin(2 phi) cos(lam) + 0.5 cos^2(phi) sin(3 lam): separable terms
    f = (2 + np.outer(lat_mean(np.sin(2 * phi)), np.cos(lam).mean(1))
         + 0.5 * np.outer(lat_mean(np.cos(phi) ** 2), np.sin(3 * lam).mean(1)))
    return np.stack([f * (1 + 0.1 * k) for k in range(3)])


def test_conservative_error_bound_and_mean_preserved():
    src = field_on(np.arange(-89.5, 90, 1.0), np.arange(0.5, 360, 1.0))
    out, _ = regrid_dataset(src, "xarray-regrid", "conservative", 1.0)
    assert np.abs(out.f.values - exact_cell_means()).max() < CONSERVATIVE_BOUND
    w_src = np.cos(np.deg2rad(src.latitude))
    w_out = np.cos(np.deg2rad(out.latitude))
    mean_src = float(src.f.isel(time=0).weighted(w_src).mean())
    mean_out = float(out.f.isel(time=0).weighted(w_out).mean())
    assert abs(mean_src - mean_out) < 1e-3


def test_weatherbench_input_passes_through():
    tgt = weatherbench_grid()
    ds = field_on(tgt.latitude.values, tgt.longitude.values)
    out, used = regrid_dataset(ds, "xarray-regrid", "bilinear", 5.625)
    assert used == "identity"
    xr.testing.assert_identical(out, ds)


@pytest.mark.skipif(HAS_XESMF, reason="xesmf is installed here")
def test_xesmf_requested_without_esmf():
    with pytest.raises(ConfigError, match="xesmf.*not importable.*envs/era5.yaml"):
        choose_backend("xesmf")
    assert choose_backend("auto") == "xarray-regrid"


def test_regrid_file_writes_canonical_output(cfg, raw_files, tmp_path):
    out = tmp_path / "r.nc"
    with dask.config.set(scheduler="threads"):  # what the regrid jobs use
        metrics, before, after = regrid_file(cfg, "pressure", "2010", raw_files[("pressure", "2010")], out)
    before.close()
    ds = load_nc(out)
    assert dict(ds.sizes) == {"time": 365, "level": 2, "latitude": 32, "longitude": 64}
    assert list(ds.level.values) == [500, 850]
    assert ds.attrs["regrid_backend"] == metrics["backend"] == "xarray-regrid"
    assert ds.z.dtype == np.float32
    # regridding a smooth-ish field keeps its level-mean within a few percent
    for lev in (500, 850):
        a = float(before.z.sel(level=lev).mean())
        b = float(ds.z.sel(level=lev).mean())
        assert abs(a - b) / abs(a) < 0.02
    assert metrics["fields"] == 365 * 4 * 2
    static = tmp_path / "s.nc"
    regrid_file(cfg, "static", "static", raw_files[("static", "static")], static)
    s = load_nc(static)
    assert dict(s.sizes) == {"latitude": 32, "longitude": 64}
    assert 0 <= float(s.lsm.min()) and float(s.lsm.max()) <= 1
