"""Open raw ERA5 NetCDF in any supported layout and check it, with errors naming the file.

Canonical form after opening: dims (time, level, latitude, longitude) for pressure-level
files, (time, latitude, longitude) for single-level files, (latitude, longitude) for the
static file; latitude ascending, longitude in [0, 360) ascending, levels in hPa ascending.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..io import InputError
from .grids import check_regular_global

log = logging.getLogger(__name__)

# new CDS (2024+) and ARCO/WB2/old-CDS names -> canonical
RENAMES = {"valid_time": "time", "pressure_level": "level", "lat": "latitude", "lon": "longitude"}
DROP = ("number", "expver", "step", "surface", "heightAboveGround")
NETCDF_MAGIC = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"CDF\x05")


def expected_times(period: str, hours: list[int]) -> pd.DatetimeIndex:
    """All time steps a year file should hold: every day of `period` at `hours` (UTC)."""
    days = pd.date_range(f"{period}-01-01", f"{period}-12-31", freq="D")
    return pd.DatetimeIndex(sorted(d + pd.Timedelta(hours=h) for d in days for h in hours))


def _open(path: Path, time_chunk: int | None) -> xr.Dataset:
    if not path.exists():
        raise InputError(path, "file not found")
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "file is empty (interrupted download?)")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not any(head.startswith(m) for m in NETCDF_MAGIC):
        raise InputError(path, f"not a NetCDF file (first bytes {head[:8]!r}); "
                               "a GRIB file or an HTML error page saved by mistake?")
    chunks = {} if time_chunk is None else {"time": time_chunk, "valid_time": time_chunk}
    try:
        ds = xr.open_dataset(path, engine="netcdf4", chunks=chunks, cache=False)
    except Exception as err:  # netCDF4 raises OSError/RuntimeError/ValueError variously
        raise InputError(path, f"cannot read NetCDF ({type(err).__name__}: {err}); "
                               "the file is probably truncated or corrupt") from None
    return ds


def canonicalise(ds: xr.Dataset) -> xr.Dataset:
    """Rename dims/coords to canonical names and drop bookkeeping coordinates."""
    ds = ds.rename({k: v for k, v in RENAMES.items() if k in ds.variables or k in ds.dims})
    ds = ds.drop_vars([d for d in DROP if d in ds.variables])
    return ds


def open_raw(path, group: str, need: dict, grid_deg: float, hours: list[int], period: str,
             time_chunk: int | None = 64) -> xr.Dataset:
    """Open one raw file, check it against what the config needs, return canonical data.

    Checks: readable NetCDF, variables and levels present, regular global grid of the
    configured spacing, no duplicate or missing time steps for the period. NaNs are
    checked lazily by `count_nans` so the data is read once.
    """
    path = Path(path)
    raw = _open(path, time_chunk)
    try:
        ds = _checked(canonicalise(raw), path, group, need, grid_deg, hours, period)
    except BaseException:
        # Never leave the handle to the garbage collector: with netCDF-C/HDF5, opening a file
        # that holds a string variable (CDS's expver) while an earlier handle to it is still
        # open crashes HDF5 (HDF5 issue 5359, netcdf4-python issue 1444).
        raw.close()
        raise
    ds.set_close(raw.close)  # closing the returned dataset closes the file
    return ds


def _checked(ds: xr.Dataset, path: Path, group: str, need: dict, grid_deg: float,
             hours: list[int], period: str) -> xr.Dataset:
    missing = [v for v in need["vars"] if v not in ds.data_vars]
    if missing:
        raise InputError(path, f"missing variable(s) {', '.join(missing)} "
                               f"(found: {', '.join(map(str, ds.data_vars)) or 'none'})")
    ds = ds[need["vars"]]
    for dim in ("latitude", "longitude"):
        if dim not in ds.dims:
            raise InputError(path, f"no {dim} dimension (dims: {', '.join(map(str, ds.dims))})")
    check_regular_global(ds.latitude.values, ds.longitude.values, grid_deg, path)
    ds = ds.assign_coords(longitude=ds.longitude % 360).sortby("longitude").sortby("latitude")

    if group == "pressure":
        if "level" not in ds.dims:
            raise InputError(path, "no pressure level dimension (expected pressure_level or level)")
        have = set(np.asarray(ds.level.values, dtype=float).round(3))
        lost = [lev for lev in need["levels"] if float(lev) not in have]
        if lost:
            raise InputError(path, f"missing pressure level(s) {', '.join(map(str, lost))} hPa "
                                   f"(found: {', '.join(f'{x:g}' for x in sorted(have))})")
        ds = ds.assign_coords(level=np.asarray(ds.level.values, dtype=float).round(3))
        ds = ds.sel(level=[float(x) for x in need["levels"]])
        ds = ds.assign_coords(level=np.asarray(need["levels"], dtype=np.int32))

    if group == "static":
        if "time" in ds.dims:
            ds = ds.isel(time=0, drop=True)
        elif "time" in ds.coords:
            ds = ds.drop_vars("time")
        return ds
    if "time" not in ds.dims:
        raise InputError(path, "no time dimension (expected valid_time or time)")
    return _check_times(ds, path, period, hours)


def _check_times(ds: xr.Dataset, path: Path, period: str, hours: list[int]) -> xr.Dataset:
    times = pd.DatetimeIndex(ds.time.values)
    dup = times[times.duplicated()]
    if len(dup):
        raise InputError(path, f"{len(dup)} duplicate time step(s), first {dup[0]}")
    if not times.is_monotonic_increasing:
        ds = ds.sortby("time")
        times = pd.DatetimeIndex(ds.time.values)
    want = expected_times(period, hours)
    lost = want.difference(times)
    if len(lost):
        raise InputError(path, f"{len(lost)} missing time step(s) of {len(want)} expected for "
                               f"{period} at hours {hours}, first {lost[0]}")
    extra = times.difference(want)
    if len(extra):
        log.info("%s: ignoring %d time steps outside %s at hours %s", path, len(extra), period, hours)
        ds = ds.sel(time=want)
    return ds


def count_nans(ds: xr.Dataset) -> dict:
    """Lazy NaN counts per variable (dask scalars), to compute alongside the real work."""
    return {name: ds[name].isnull().sum() for name in ds.data_vars}


def describe_nans(ds: xr.Dataset, counts: dict, path) -> InputError | None:
    """An InputError saying how many NaNs and where the first is, or None if clean."""
    bad = {k: int(v) for k, v in counts.items() if int(v) > 0}
    if not bad:
        return None
    name = next(iter(bad))
    arr = ds[name]
    flat = np.flatnonzero(np.isnan(arr.values))
    idx = np.unravel_index(flat[0], arr.shape)
    where = ", ".join(f"{d}={arr[d].values[i]}" for d, i in zip(arr.dims, idx))
    total = ", ".join(f"{k}: {v}" for k, v in bad.items())
    return InputError(path, f"NaN values ({total}); first in {name} at {where}")
