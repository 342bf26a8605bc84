"""Bad raw input fails fast with the file and the problem named, leaving no output behind."""

import shutil

import netCDF4
import numpy as np
import pytest

from pipeline_src.era5.layout import open_raw
from pipeline_src.era5.regrid import regrid_file
from pipeline_src.io import InputError


def _open(cfg, path, group="pressure", period="2010"):
    return open_raw(path, group, cfg.required[group], cfg.era5["grid_deg"], cfg.era5["hours"], period)


def _copy(raw_files, tmp_path, key=("pressure", "2010")):
    dst = tmp_path / "bad.nc"
    shutil.copyfile(raw_files[key], dst)
    return dst


def test_truncated_file(cfg, raw_files, tmp_path):
    bad = _copy(raw_files, tmp_path)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.nc"
    with pytest.raises(InputError, match=r"bad\.nc: .*truncated or corrupt"):
        regrid_file(cfg, "pressure", "2010", bad, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nc"]  # no output, no temporary


@pytest.mark.parametrize("content, message", [
    (b"", "file is empty"),
    (b"<html>502 Bad Gateway</html>", "not a NetCDF file"),
    (b"GRIB\x00\x00\x01", "not a NetCDF file"),
])
def test_not_netcdf(cfg, tmp_path, content, message):
    bad = tmp_path / "x.nc"
    bad.write_bytes(content)
    with pytest.raises(InputError, match=f"x.nc: {message}"):
        _open(cfg, bad)


def test_missing_file(cfg, tmp_path):
    with pytest.raises(InputError, match="nope.nc: file not found"):
        _open(cfg, tmp_path / "nope.nc")


def test_missing_variable(cfg, raw_files, tmp_path):
    bad = tmp_path / "novar.nc"
    with netCDF4.Dataset(raw_files[("pressure", "2010")]) as src, netCDF4.Dataset(bad, "w") as dst:
        for name, dim in src.dimensions.items():
            dst.createDimension(name, len(dim))
        for name, var in src.variables.items():
            if name != "q":
                dst.createVariable(name, var.datatype, var.dimensions)[...] = var[...]
    with pytest.raises(InputError, match=r"novar.nc: missing variable\(s\) q \(found: z, t, u\)"):
        _open(cfg, bad)


def test_missing_level(cfg, raw_files):
    need = dict(cfg.required["pressure"], levels=[500, 700, 850])
    with pytest.raises(InputError, match=r"2010.nc: missing pressure level\(s\) 700 hPa \(found: 500, 850\)"):
        open_raw(raw_files[("pressure", "2010")], "pressure", need, 10.0, [0], "2010")


def test_unexpected_grid(cfg, raw_files):
    with pytest.raises(InputError, match=r"unexpected grid 19x36 .*expected a global 5 deg grid"):
        open_raw(raw_files[("pressure", "2010")], "pressure", cfg.required["pressure"], 5.0, [0], "2010")


def test_nans_are_counted_and_located(cfg, raw_files, tmp_path):
    bad = _copy(raw_files, tmp_path)
    with netCDF4.Dataset(bad, "a") as nc:
        t = nc["t"][:]
        t[40, 1, 3, 7] = np.nan
        t[41, 0, 0, 0] = np.nan
        nc["t"][:] = t
    out = tmp_path / "out.nc"
    with pytest.raises(InputError) as err:
        regrid_file(cfg, "pressure", "2010", bad, out)
    msg = str(err.value)
    assert "bad.nc: NaN values (t: 2)" in msg
    assert "time=2010-02-10" in msg and "level=500" in msg  # file index 1 of (850, 500)
    assert not out.exists()


def test_duplicate_and_missing_times(cfg, raw_files, tmp_path):
    src = raw_files[("single", "2010")]
    dup, gap = tmp_path / "dup.nc", tmp_path / "gap.nc"
    for path, edit in ((dup, lambda v: v.__setitem__(5, v[4])), (gap, lambda v: v.__setitem__(5, v[5] + 3600))):
        shutil.copyfile(src, path)
        with netCDF4.Dataset(path, "a") as nc:
            v = nc["valid_time"][:]
            edit(v)
            nc["valid_time"][:] = v
    with pytest.raises(InputError, match=r"dup.nc: 1 duplicate time step\(s\), first 2010-01-05"):
        _open(cfg, dup, "single")
    with pytest.raises(InputError, match=r"gap.nc: 1 missing time step\(s\) of 365 expected for 2010 .*first 2010-01-06"):
        _open(cfg, gap, "single")


def test_wrong_year(cfg, raw_files):
    with pytest.raises(InputError, match="missing time step"):
        _open(cfg, raw_files[("single", "2010")], "single", "2011")
