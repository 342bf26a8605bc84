"""ERA5 as users have it: date-range splits, and NetCDF already on disk (era5.source files)
in any time chunking and either CDS layout. The files here are written by xarray, not by
the pipeline's own CDS writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from pipeline_src import config as config_mod
from pipeline_src.era5 import periods
from pipeline_src.era5.assemble import assemble
from pipeline_src.era5.files import match_files, period_fingerprint
from pipeline_src.era5.layout import open_raw
from pipeline_src.era5.regrid import regrid_file
from pipeline_src.era5.sources import cds_requests
from pipeline_src.era5.synthetic import write_synthetic
from pipeline_src.io import ConfigError, InputError

from ..conftest import SMALL, load_nc, small_config

RANGES = {"train": [2010], "val": {"start": "2011-01-01", "end": "2011-02-28"},
          "test": {"start": "2011-06-01", "end": "2011-07-15"}}


def _era5_xarray(group: str, times: pd.DatetimeIndex, variables: list[str], layout: str = "new",
                 levels=(850, 500), seed: int = 0) -> xr.Dataset:
    """A 10 deg ERA5-like dataset built with xarray alone: CDS names of either layout, latitude
    descending, values that depend on the time step (so a wrong join shows)."""
    tdim, ldim = ("valid_time", "pressure_level") if layout == "new" else ("time", "level")
    lat, lon = np.arange(90.0, -90.1, -10.0), np.arange(0.0, 360.0, 10.0)
    step = (times - pd.Timestamp("2000-01-01")) / pd.Timedelta(days=1)
    rng = np.random.default_rng(seed)
    coords = {tdim: times, "latitude": lat, "longitude": lon}
    dims = (tdim,) + ((ldim,) if group == "pressure" else ()) + ("latitude", "longitude")
    if group == "pressure":
        coords[ldim] = list(levels)
    shape = tuple(len(coords[d]) for d in dims)
    data = {}
    for i, var in enumerate(variables):
        base = 250.0 + 10 * i + np.cos(np.deg2rad(lat))[:, None] * 20 + np.sin(np.deg2rad(lon))[None, :]
        field = base + 0.01 * np.asarray(step).reshape((-1,) + (1,) * (len(shape) - 1)) \
            + rng.normal(0, 1, shape)
        data[var] = (dims, field.astype(np.float32))
    return xr.Dataset(data, coords=coords)


def _write(ds: xr.Dataset, path, layout: str = "new"):
    """Write as the CDS would: float32 (new) or int16 packed with scale/offset (old)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "old":
        enc = {v: {"dtype": "int16", "scale_factor": 0.01, "add_offset": 260.0, "_FillValue": -32767}
               for v in ds.data_vars}
        ds.to_netcdf(path, format="NETCDF3_64BIT", encoding=enc)
    else:
        ds.to_netcdf(path, engine="netcdf4")
    return path


def _days(start, end, hours=(0,)):
    return periods.with_hours(pd.date_range(start, end, freq="D"), list(hours))


# --------------------------------------------------------------------------- date ranges
def test_date_range_splits_from_yaml(tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(SMALL)) | {}
    text = yaml.safe_dump(raw).replace("test:\n    - 2012", "test: {start: 2012-12-01, end: 2013-01-31}")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = config_mod.load(path)  # YAML reads the dates as datetime.date: accepted as ISO strings
    assert cfg.era5["years"]["test"] == {"start": "2012-12-01", "end": "2013-01-31"}
    assert cfg.all_years == [2010, 2011, 2012, 2013]
    assert len(periods.period_times("2012", [0, 12], cfg.era5["years"])) == 2 * 31
    assert len(periods.period_times("2013", [0], cfg.era5["years"])) == 31
    assert periods.describe(cfg.era5["years"], "test") == "2012-12-01 to 2013-01-31"
    assert period_fingerprint("2012", [0], cfg.era5["years"]) != period_fingerprint("2012", [0], SMALL["era5"]["years"])
    assert period_fingerprint("2010", [0], cfg.era5["years"]) == period_fingerprint("2010", [0], SMALL["era5"]["years"])


@pytest.mark.parametrize("years, message", [
    ({"train": [2010], "val": [2011], "test": {"start": "2011-12-01", "end": "2012-01-31"}},
     r"31 day\(s\) from 2011-12-01 is in both val and test"),
    ({"train": [2010], "val": [2011], "test": {"start": "2012-03-01", "end": "2012-02-01"}},
     "era5.years.test: end 2012-02-01 is before start 2012-03-01"),
    ({"train": [2010], "val": [2011], "test": {"start": "2012-02-30", "end": "2012-03-01"}},
     "era5.years.test: not a date"),
    ({"train": [2010], "val": [2011], "test": {"start": "2012-06-01", "end": "2012-06-20"}},
     r"2012-06-01 to 2012-06-20 is 20 day\(s\); the 30-day lead"),
    ({"train": [2008, 2010], "val": [2011], "test": [2012]},
     "era5.years.train: 2008, 2010 are not consecutive"),
    ({"train": [2010], "val": [2011], "test": {"start": "2012-06-01"}}, "era5.years.test"),
])
def test_bad_split_ranges_are_refused(years, message):
    with pytest.raises(ConfigError, match=message):
        small_config(years=years)


def test_cds_requests_cover_the_range_only():
    cfg = small_config(years=RANGES)
    requests = cds_requests("single", "2011", cfg.required["single"], cfg.era5)
    months = {name: r["day"] for name, r in requests}
    assert list(months) == ["01", "02", "06", "07"]
    assert len(months["02"]) == 28 and months["07"] == [f"{d:02d}" for d in range(1, 16)]
    assert all(r["year"] == ["2011"] for _, r in requests)


def test_a_file_holding_weeks_is_checked_against_the_range(tmp_path):
    cfg = small_config(years=RANGES)
    need = cfg.required["single"]
    times = _days("2011-05-20", "2011-07-31")  # more than asked for: the rest is ignored
    good = _write(_era5_xarray("single", times, need["vars"]), tmp_path / "single_2011.nc")
    with pytest.raises(InputError, match="missing time step"):  # val's January and February are not there
        open_raw(good, "single", need, 10.0, [0], "2011", years=cfg.era5["years"])
    test_only = small_config(years={"train": [2010], "val": [2009],
                                    "test": {"start": "2011-06-01", "end": "2011-07-15"}})
    with open_raw(good, "single", need, 10.0, [0], "2011", years=test_only.era5["years"]) as ds:
        assert ds.sizes["time"] == 45 and str(ds.time.values[-1])[:10] == "2011-07-15"
    gap = _write(_era5_xarray("single", times.drop(pd.Timestamp("2011-06-10")), need["vars"]),
                 tmp_path / "gap.nc")
    with pytest.raises(InputError, match=r"gap.nc: 1 missing time step\(s\) of 45 expected for 2011 "
                                         r"\(2011-06-01 to 2011-07-15\) at hours \[0\], first 2011-06-10"):
        open_raw(gap, "single", need, 10.0, [0], "2011", years=test_only.era5["years"])


def test_assemble_with_date_range_splits(tmp_path):
    cfg = small_config(years=RANGES, channels=["z_500", "t2m"])
    regridded = {}
    for group, need in cfg.required.items():
        for period in ["static"] if group == "static" else [str(y) for y in cfg.all_years]:
            raw = write_synthetic(tmp_path / "raw" / f"{group}_{period}.nc", group, period, need, cfg.era5) \
                or tmp_path / "raw" / f"{group}_{period}.nc"
            regridded[(group, period)] = tmp_path / "regridded" / f"{group}_{period}.nc"
            regrid_file(cfg, group, period, raw, regridded[(group, period)])
    assert load_nc(regridded[("single", "2011")]).sizes["time"] == 59 + 45  # the raw file holds only these
    manifest_metrics = assemble(cfg, regridded, tmp_path / "assembled")
    assert manifest_metrics["n_channels"] == len(cfg.channels)
    val = xr.open_zarr(tmp_path / "assembled" / "val.zarr", consolidated=False)
    test = xr.open_zarr(tmp_path / "assembled" / "test.zarr", consolidated=False)
    assert val.sizes["time"] == 59 and test.sizes["time"] == 45
    assert str(test.time.values[0])[:10] == "2011-06-01" and test.attrs["period"] == "2011-06-01 to 2011-07-15"


# --------------------------------------------------------------------------- source: files
def _files_config(tmp_path) -> config_mod.Config:
    return small_config(source="files", files={g: str(tmp_path / g / "*.nc") for g in ("pressure", "single", "static")})


def test_files_source_needs_a_pattern_per_group():
    with pytest.raises(ConfigError, match="era5.files: source 'files' needs a path pattern for static"):
        small_config(source="files", files={"pressure": "/p/*.nc", "single": "/s/*.nc"})


def test_monthly_files_regrid_exactly_like_one_year_file(tmp_path):
    cfg = _files_config(tmp_path)
    need = cfg.required["pressure"]
    year = _era5_xarray("pressure", _days("2010-01-01", "2010-12-31"), need["vars"], levels=need["levels"][::-1])
    whole = _write(year, tmp_path / "whole" / "pressure_2010.nc")
    for month, part in year.groupby("valid_time.month"):
        _write(part, tmp_path / "mirror" / "2010" / f"era5_pl_2010_{month:02d}.nc")
    _write(year.isel(valid_time=slice(0, 5)).assign_coords(
        valid_time=_days("2009-12-27", "2009-12-31")), tmp_path / "mirror" / "2010" / "era5_pl_2009_12.nc")
    files = match_files(str(tmp_path / "mirror" / "{year}" / "era5_pl_*.nc"), "pressure", "2010",
                        cfg.era5["years"])
    assert len(files) == 13  # December 2009 too: it holds no step of 2010 and is skipped
    m_one, _, one = regrid_file(cfg, "pressure", "2010", whole, tmp_path / "one.nc")
    m_many, _, many = regrid_file(cfg, "pressure", "2010", files, tmp_path / "many.nc")
    assert m_many["files_read"] == 12 and m_one["files_read"] == 1
    a, b = load_nc(tmp_path / "one.nc"), load_nc(tmp_path / "many.nc")
    for var in need["vars"]:
        np.testing.assert_array_equal(a[var].values, b[var].values)
    assert "era5_pl_2010_01.nc" in b.attrs["source_file"]


def test_one_variable_per_file_in_the_old_layout(tmp_path):
    cfg = _files_config(tmp_path)
    need = cfg.required["single"]
    full = _era5_xarray("single", _days("2010-01-01", "2010-12-31"), need["vars"], layout="old")
    for var in need["vars"]:
        _write(full[[var]], tmp_path / f"{var}_2010.nc", layout="old")
    _write(full[[need["vars"][0]]].rename({need["vars"][0]: "tp"}), tmp_path / "tp_2010.nc", layout="old")
    files = match_files(str(tmp_path / "*_{year}.nc"), "single", "2010", cfg.era5["years"])
    with open_raw(files, "single", need, 10.0, [0], "2010", years=cfg.era5["years"]) as ds:
        assert sorted(ds.data_vars) == sorted(need["vars"]) and ds.sizes["time"] == 365
        for var in need["vars"]:  # packed int16 at 0.01: equal to a hundredth
            want = full[var].sortby("latitude").values
            np.testing.assert_allclose(ds[var].values, want, atol=0.006)


def _months(tmp_path, need, months=range(1, 13), group="single", name="s"):
    year = _era5_xarray(group, _days("2010-01-01", "2010-12-31"), need["vars"])
    out = []
    for month, part in year.groupby("valid_time.month"):
        if month in months:
            out.append(_write(part, tmp_path / f"{name}_2010_{month:02d}.nc"))
    return out, year


def test_files_refusals_name_the_real_file(tmp_path):
    cfg = _files_config(tmp_path)
    need = cfg.required["single"]
    years = cfg.era5["years"]
    files, year = _months(tmp_path, need, months=[m for m in range(1, 13) if m != 4])
    with pytest.raises(InputError, match=r"t2m: 30 missing time step\(s\) of 365 expected for 2010 .*"
                                         r"first 2010-04-01 00:00:00, in 11 file\(s\) holding it "
                                         r"\(.*s_2010_01.nc, .*s_2010_02.nc, .*s_2010_03.nc and 8 more\)"):
        open_raw(files, "single", need, 10.0, [0], "2010", years=years)
    twice = _write(year.isel(valid_time=slice(58, 62)), tmp_path / "s_overlap.nc")
    with pytest.raises(InputError, match=r"s_overlap.nc: t2m at 2010-02-28 00:00:00 is also in .*s_2010_02.nc"):
        open_raw(files + [twice], "single", need, 10.0, [0], "2010", years=years)
    no_u10 = [_write(year[["t2m"]].isel(valid_time=half), tmp_path / f"t2m_only_{i}.nc")
              for i, half in enumerate((slice(0, 180), slice(180, None)))]
    with pytest.raises(InputError, match="no single file for 2010 holds variable u10 .*t2m_only_0.nc"):
        open_raw(no_u10, "single", need, 10.0, [0], "2010", years=years)
    coarse = year.isel(latitude=slice(None, None, 2), longitude=slice(None, None, 2)).isel(valid_time=slice(90, 120))
    bad_grid = _write(coarse, tmp_path / "s_2010_04_coarse.nc")
    with pytest.raises(InputError, match="s_2010_04_coarse.nc: unexpected grid"):
        open_raw(files + [bad_grid], "single", need, 10.0, [0], "2010", years=years)


def test_nan_in_one_of_many_files_names_that_file(tmp_path):
    cfg = _files_config(tmp_path)
    need = cfg.required["single"]
    files, year = _months(tmp_path, need)
    spoiled = year.sel(valid_time=year.valid_time.dt.month == 7).copy(deep=True)
    spoiled["u10"][3, 2, 5] = np.nan
    _write(spoiled, tmp_path / "s_2010_07.nc")
    with pytest.raises(InputError, match=r"s_2010_07.nc: NaN values \(u10: 1\); first in u10 at time=2010-07-04"):
        regrid_file(cfg, "single", "2010", files, tmp_path / "out.nc")
    assert not (tmp_path / "out.nc").exists()


def test_match_files_returns_an_unmatched_pattern_as_is(tmp_path):
    (tmp_path / "b.nc").touch()
    (tmp_path / "a.nc").touch()
    years = small_config().era5["years"]
    assert match_files([str(tmp_path / "*.nc"), str(tmp_path / "a.nc")], "static", "static", years) == \
        [str(tmp_path / "a.nc"), str(tmp_path / "b.nc")]
    assert match_files(str(tmp_path / "x_{year}.nc"), "single", "2011", years) == [str(tmp_path / "x_2011.nc")]


def test_dropped_steps_are_logged_with_their_reason(tmp_path, caplog):
    import logging

    cfg = _files_config(tmp_path)
    need = cfg.required["single"]
    times = _days("2009-12-30", "2010-12-31").union(pd.date_range("2010-03-01 12:00", periods=31, freq="D"))
    path = _write(_era5_xarray("single", times, need["vars"]), tmp_path / "s.nc")
    caplog.set_level(logging.INFO, logger="pipeline_src.era5.layout")
    with open_raw([path], "single", need, 10.0, [0], "2010", years=cfg.era5["years"]) as ds:
        assert ds.sizes["time"] == 365
    (line,) = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert line.endswith("ignoring 33 time step(s): 2 on days outside 2010 (2010-01-01 to 2010-12-31), "
                         "31 at hours [12] (era5.hours keeps [0])"), line
