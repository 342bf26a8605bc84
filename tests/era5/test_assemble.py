"""acquire -> regrid -> assemble round trip on the synthetic source."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline_src.era5.assemble import ClimatologyAccumulator, RunningStats, assemble
from pipeline_src.era5.channels import G
from pipeline_src.era5.synthetic import standard_height
from pipeline_src.io import InputError
from tests.conftest import load_nc


@pytest.fixture(scope="module")
def assembled(assembled_era5):
    return assembled_era5


def test_splits_shapes_and_channels(assembled):
    cfg, out, metrics, _ = assembled
    names = [c.name for c in cfg.channels]
    for split, year, n in (("train", 2010, 365), ("val", 2011, 365), ("test", 2012, 366)):
        ds = xr.open_zarr(out / f"{split}.zarr", consolidated=False)
        assert ds.fields.dims == ("time", "channel", "latitude", "longitude")
        assert ds.fields.shape == (n, len(names), 32, 64)
        assert list(ds.channel.values) == names
        assert pd.DatetimeIndex(ds.time.values).year.unique().tolist() == [year]
        assert ds.fields.encoding["chunks"] == (1, 1, 32, 64)  # random access by time, a reader takes only its channels
        assert ds.fields.encoding["shards"] == (32, 1, 32, 64)  # a shard per channel and shard_steps steps
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["channels"] == names and manifest["regrid_backend"] == ["xarray-regrid"]
    assert manifest["splits"]["test"]["n_times"] == 366
    assert metrics["n_channels"] == len(names)


def test_channel_values_are_physical(assembled):
    cfg, out, _, regridded = assembled
    ds = xr.open_zarr(out / "train.zarr", consolidated=False).load()
    f = ds.fields
    # z_500 near the standard atmosphere: catches a level mix-up
    assert abs(float(f.sel(channel="z_500").mean()) / G - standard_height(500)) < 300
    assert 250 < float(f.sel(channel="t_850").mean()) < 290
    # static channels are constant in time; orography is surface geopotential / g in metres
    oro = f.sel(channel="orography")
    assert float(abs(oro - oro.isel(time=0)).max()) == 0
    st = load_nc(regridded[("static", "static")])
    np.testing.assert_allclose(oro.isel(time=0).values, st.z.values / G, rtol=1e-5)
    lsm = f.sel(channel="lsm")
    assert 0 <= float(lsm.min()) and float(lsm.max()) <= 1


def test_normalisation_from_training_years_only(assembled):
    cfg, out, _, _ = assembled
    stats = json.loads((out / "normalization.json").read_text())
    assert stats["years"] == [2010]
    mean, std = np.array(stats["mean"]), np.array(stats["std"])
    train = xr.open_zarr(out / "train.zarr", consolidated=False).fields.values.astype(np.float64)
    np.testing.assert_allclose(mean, train.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, train.std(axis=(0, 2, 3)), rtol=1e-6)
    normed = (train - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(normed.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(normed.std(axis=(0, 2, 3)), 1, atol=1e-6)
    val = xr.open_zarr(out / "val.zarr", consolidated=False).fields.values.astype(np.float64)
    assert not np.allclose(mean, val.mean(axis=(0, 2, 3)), rtol=1e-6)


def test_climatology_is_a_smoothed_training_mean(assembled):
    cfg, out, _, _ = assembled
    clim = xr.open_zarr(out / "climatology.zarr", consolidated=False).climatology
    assert clim.dims == ("dayofyear", "hour", "channel", "latitude", "longitude")
    assert clim.shape == (366, 1, len(cfg.channels), 32, 64)
    train = xr.open_zarr(out / "train.zarr", consolidated=False).fields.load()
    # day 100 with a 15-day window: the mean of training days 93..107
    want = train.isel(time=slice(92, 107)).astype("float64").mean("time")
    np.testing.assert_allclose(clim.sel(dayofyear=100, hour=0).values, want.values, rtol=1e-6, atol=1e-6)
    # NH mid-latitude t_850: July warmer than January in the climatology
    t = clim.sel(channel="t_850", hour=0, latitude=slice(30, 60)).mean(["latitude", "longitude"])
    assert float(t.sel(dayofyear=200)) - float(t.sel(dayofyear=15)) > 5
    assert not np.isnan(clim.values).any()  # day 366 filled although 2010 is not a leap year


def test_anomaly_std_static_channels_and_units(assembled):
    cfg, out, _, _ = assembled
    stats = json.loads((out / "normalization.json").read_text())
    assert stats["static_channels"] == ["lsm", "orography"]
    train = xr.open_zarr(out / "train.zarr", consolidated=False).fields
    clim = xr.open_zarr(out / "climatology.zarr", consolidated=False).climatology.values
    doy = pd.DatetimeIndex(train.time.values).day_of_year.values - 1
    anomaly = train.values.astype(np.float64) - clim[doy, 0]
    np.testing.assert_allclose(stats["anomaly_std"], np.sqrt((anomaly**2).mean(axis=(0, 2, 3))), rtol=1e-6)
    ratio = np.array(stats["anomaly_std"]) / np.array(stats["std"])
    names = [c.name for c in cfg.channels]
    assert ratio[names.index("lsm")] == 0 and ratio[names.index("orography")] == 0
    assert 0.02 < ratio[names.index("t2m")] < 0.5  # the seasonal cycle dominates 2 m temperature
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"]["z_500"] == "m2 s-2" and manifest["units"]["t2m"] == "K"
    assert manifest["units"]["q_850"] == "kg kg-1" and manifest["units"]["orography"] == "m"


def test_accumulators_match_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(5, 3, (100, 2, 4, 5))
    stats = RunningStats(2)
    for lo in range(0, 100, 7):
        stats.update(data[lo:lo + 7])
    np.testing.assert_allclose(stats.mean, data.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(stats.std, data.std(axis=(0, 2, 3)))
    times = pd.date_range("2001-12-01", periods=100, freq="12h")
    acc = ClimatologyAccumulator([0, 12], (2, 4, 5))
    acc.update(times[:60], data[:60])
    acc.update(times[60:], data[60:])
    res = acc.result(1)
    i = 10  # 2001-12-06 00:00 is day 340
    np.testing.assert_allclose(res[339, 0], data[i], rtol=1e-6)


def test_missing_input_is_named(assembled, tmp_path):
    cfg, _, _, regridded = assembled
    files = dict(regridded)
    broken = tmp_path / "broken.nc"
    broken.write_bytes(b"junk")
    files[("single", "2011")] = broken
    out = tmp_path / "out"
    with pytest.raises(InputError, match="broken.nc: cannot read regridded file") as err:
        assemble(cfg, files, out)
    assert not (out / "manifest.json").exists()
    # the files opened before the error are closed, not left to the garbage collector (a
    # handle finalised in the middle of another HDF5 call can crash the process); checked
    # while `err` keeps assemble's frame, and so its datasets, alive
    assert not _open_netcdf(files.values(), err)


def test_a_wrong_grid_closes_every_file(assembled, tmp_path):
    cfg, _, _, regridded = assembled
    files = dict(regridded)
    coarse = tmp_path / "coarse.nc"
    load_nc(files[("single", "2011")]).isel(latitude=slice(0, 16)).to_netcdf(coarse)
    files[("single", "2011")] = coarse
    with pytest.raises(InputError, match="coarse.nc: expected the 32x64 grid") as err:
        assemble(cfg, files, tmp_path / "out")
    assert not _open_netcdf(files.values(), err)


def _open_netcdf(paths, err: pytest.ExceptionInfo) -> list[str]:
    """Those of `paths` that xarray still holds open while `err` keeps the failed call's frames."""
    assert err.tb is not None
    from xarray.backends.file_manager import FILE_CACHE

    held = {str(arg) for key in list(FILE_CACHE.keys()) for arg in key[1]}
    return [str(p) for p in paths if str(p) in held]
