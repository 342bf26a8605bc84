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
from .periods import period_times

log = logging.getLogger(__name__)

# new CDS (2024+) and ARCO/WB2/old-CDS names -> canonical
RENAMES = {"valid_time": "time", "pressure_level": "level", "lat": "latitude", "lon": "longitude"}
DROP = ("number", "expver", "step", "surface", "heightAboveGround")
NETCDF_MAGIC = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"CDF\x05")


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


def open_raw(paths, group: str, need: dict, grid_deg: float, hours: list[int], period: str,
             time_chunk: int | None = 64, years: dict | None = None) -> xr.Dataset:
    """Open one raw file, or several that together hold the period; check them against what
    the config needs; return canonical data whose `close()` closes every file.

    Checks: readable NetCDF, variables and levels present, regular global grid of the
    configured spacing, no duplicate or missing time steps for the period (its days in the
    splits of `years`). Several files may split the period in time (a file per month) and
    the variables (a file per variable); files holding none of the needed variables or
    times are skipped. Errors name the file at fault. NaNs are checked lazily by
    `count_nans` so the data is read once.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise InputError(None, f"no {group} file given for {period}")
    want = None if group == "static" else period_times(period, hours, years)
    opened: list[xr.Dataset] = []
    try:
        pieces = []
        for path in paths:
            raw = _open(path, time_chunk)
            opened.append(raw)
            piece = _checked(canonicalise(raw), path, group, need, grid_deg, hours, period, want,
                             alone=len(paths) == 1)
            if piece is not None:
                pieces.append((path, piece))
        ds = pieces[0][1] if len(paths) == 1 else _combine(pieces, paths, group, need, hours, period, want)
    except BaseException:
        # Never leave the handles to the garbage collector: with netCDF-C/HDF5, opening a file
        # that holds a string variable (CDS's expver) while an earlier handle to it is still
        # open crashes HDF5 (HDF5 issue 5359, netcdf4-python issue 1444).
        for raw in opened:
            raw.close()
        raise
    ds.set_close(lambda: [raw.close() for raw in opened])  # closing the result closes the files
    ds.attrs["source_files"] = [str(p) for p, _ in pieces]
    return ds


def _span(want: pd.DatetimeIndex) -> str:
    return f"{want[0]:%Y-%m-%d} to {want[-1]:%Y-%m-%d}"


def _checked(ds: xr.Dataset, path: Path, group: str, need: dict, grid_deg: float,
             hours: list[int], period: str, want: pd.DatetimeIndex | None, alone: bool) -> xr.Dataset | None:
    """One file's part of the period, checked; None for a file (among several) with no part of it."""
    found = [v for v in need["vars"] if v in ds.data_vars]
    missing = [v for v in need["vars"] if v not in ds.data_vars]
    if missing and (alone or not found):
        if not alone:
            log.info("%s: holds none of %s; skipped", path, ", ".join(need["vars"]))
            return None
        raise InputError(path, f"missing variable(s) {', '.join(missing)} "
                               f"(found: {', '.join(map(str, ds.data_vars)) or 'none'})")
    ds = ds[found]
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
    times = pd.DatetimeIndex(ds.time.values)
    dup = times[times.duplicated()]
    if len(dup):
        raise InputError(path, f"{len(dup)} duplicate time step(s), first {dup[0]}")
    if not times.is_monotonic_increasing:
        ds = ds.sortby("time")
        times = pd.DatetimeIndex(ds.time.values)
    if alone:
        lost = want.difference(times)
        if len(lost):
            raise InputError(path, f"{len(lost)} missing time step(s) of {len(want)} expected for "
                                   f"{period} ({_span(want)}) at hours {hours}, first {lost[0]}")
    keep = times.intersection(want)
    if not len(keep):
        log.info("%s: no time step of %s (%s) at hours %s; skipped", path, period, _span(want), hours)
        return None
    if len(keep) < len(times):
        log.info("%s: ignoring %s", path, _dropped(times.difference(keep), want, period, hours))
        ds = ds.sel(time=keep)
    return ds


def _dropped(dropped: pd.DatetimeIndex, want: pd.DatetimeIndex, period: str, hours: list[int]) -> str:
    """Why time steps of a file are not used: on days no split wants, or at hours not in era5.hours."""
    off_hour = dropped[dropped.normalize().isin(want.normalize().unique())]
    reasons = []
    if len(dropped) > len(off_hour):
        reasons.append(f"{len(dropped) - len(off_hour)} on days outside {period} ({_span(want)})")
    if len(off_hour):
        reasons.append(f"{len(off_hour)} at hours {sorted(set(off_hour.hour))} (era5.hours keeps {hours})")
    return f"{len(dropped)} time step(s): " + ", ".join(reasons)


def _combine(pieces, paths: list[Path], group: str, need: dict, hours: list[int], period: str,
             want: pd.DatetimeIndex | None) -> xr.Dataset:
    """Join the parts of several files: along time per variable, then the variables."""
    listing = _listing(paths)
    per_var, owners = [], {}
    for var in need["vars"]:
        parts = [(path, ds[var]) for path, ds in pieces if var in ds.data_vars]
        if not parts:
            raise InputError(None, f"no {group} file for {period} holds variable {var} ({listing})")
        if group == "static":
            if len(parts) > 1:
                raise InputError(parts[1][0], f"{var} is also in {parts[0][0]}; give one static file per variable")
            per_var.append(parts[0][1])
            continue
        owner: dict[pd.Timestamp, Path] = {}
        for path, arr in parts:
            for t in pd.DatetimeIndex(arr.time.values):
                if t in owner:
                    raise InputError(path, f"{var} at {t} is also in {owner[t]}; the files overlap in time")
                owner[t] = path
        owners.update({(var, t): p for t, p in owner.items()})
        joined = xr.concat([arr for _, arr in parts], dim="time").sortby("time")
        lost = want.difference(pd.DatetimeIndex(joined.time.values))
        if len(lost):
            raise InputError(None, f"{var}: {len(lost)} missing time step(s) of {len(want)} expected for "
                                   f"{period} ({_span(want)}) at hours {hours}, first {lost[0]}, in "
                                   f"{len(parts)} file(s) holding it ({_listing([p for p, _ in parts])})")
        per_var.append(joined)
    try:
        merged = xr.merge(per_var, join="exact", compat="override", combine_attrs="drop")
    except ValueError as err:
        raise InputError(None, f"the {group} files for {period} disagree on their grid or levels "
                               f"({err}; {listing})") from None
    merged.attrs["file_of"] = owners  # (variable, time) -> file, to name the file holding a NaN
    return merged


def _listing(paths: list[Path], most: int = 3) -> str:
    """'a.nc, b.nc and 10 more' with full paths, for errors about several files."""
    names = [str(p) for p in paths[:most]]
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(names) + more


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
    if "time" in arr.dims:  # among several files, name the one holding that step
        path = ds.attrs.get("file_of", {}).get((name, pd.Timestamp(arr.time.values[idx[arr.dims.index("time")]])), path)
    return InputError(path, f"NaN values ({total}); first in {name} at {where}")
