"""Stage 2: regrid one raw file to the WeatherBench 5.625 deg grid (32 x 64).

Backends: xESMF (ESMF's weights, cached to a file; needs the conda env in envs/) and
xarray-regrid (pure Python, pip). Work is chunked over time with dask, so memory stays
bounded whatever the length of the input.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import uuid
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from ..config import Config
from ..io import ConfigError, InputError, atomic_path
from .grids import check_regular_global, weatherbench_grid
from .layout import count_nans, describe_nans, open_raw

log = logging.getLogger(__name__)


def available_backends() -> list[str]:
    """Regrid backends importable here, in order of preference."""
    names = []
    if importlib.util.find_spec("xesmf") is not None:
        names.append("xesmf")
    if importlib.util.find_spec("xarray_regrid") is not None:
        names.append("xarray-regrid")
    return names


def choose_backend(requested: str) -> str:
    """Resolve `auto` to xesmf where it imports, else xarray-regrid; check explicit choices."""
    have = available_backends()
    if requested == "auto":
        if not have:
            raise ConfigError(None, "regrid.backend auto: neither xesmf nor xarray-regrid imports")
        return have[0]
    if requested not in have:
        hint = " (xESMF needs ESMF from conda-forge: use envs/era5.yaml)" if requested == "xesmf" else ""
        raise ConfigError(None, f"regrid.backend {requested!r} is not importable here{hint}")
    return requested


def regrid_xarray_regrid(ds: xr.Dataset, target: xr.Dataset, method: str) -> xr.Dataset:
    """Regrid with xarray-regrid (periodic longitude padding is done by the library)."""
    import xarray_regrid  # noqa: F401  (registers the .regrid accessor)

    grid = target[["latitude", "longitude"]].drop_vars(["lat_b", "lon_b"], errors="ignore")
    if method == "bilinear":
        return ds.regrid.linear(grid, time_dim="time")
    return ds.regrid.conservative(grid, latitude_coord="latitude", time_dim="time", skipna=False)


def _with_bounds(ds: xr.Dataset, deg: float) -> xr.Dataset:
    lat, lon = ds.latitude.values, ds.longitude.values
    lat_b = np.clip(np.concatenate([lat - deg / 2, lat[-1:] + deg / 2]), -90, 90)
    lon_b = np.concatenate([lon - deg / 2, lon[-1:] + deg / 2])
    return ds.assign_coords(lat_b=("lat_b", lat_b), lon_b=("lon_b", lon_b))


def regrid_xesmf(ds: xr.Dataset, target: xr.Dataset, method: str, weights_file: Path,
                 src_deg: float) -> xr.Dataset:
    """Regrid with xESMF, periodic in longitude, reusing (or writing) a weights file."""
    import xesmf as xe

    rename = {"latitude": "lat", "longitude": "lon"}
    src = _with_bounds(ds, src_deg).rename(rename)
    tgt = target.rename(rename)
    esmf_method = "bilinear" if method == "bilinear" else "conservative"
    if weights_file.exists():
        regridder = xe.Regridder(src, tgt, esmf_method, periodic=True, weights=str(weights_file))
    else:
        regridder = xe.Regridder(src, tgt, esmf_method, periodic=True)
        weights_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights_file.with_name(f".{weights_file.name}.{uuid.uuid4().hex[:8]}")
        regridder.to_netcdf(str(tmp))
        os.replace(tmp, weights_file)  # concurrent jobs may race: last rename wins, same content
    out = regridder(src.drop_vars(["lat_b", "lon_b"]), keep_attrs=True)
    return out.rename({"lat": "latitude", "lon": "longitude"})


def regrid_dataset(ds: xr.Dataset, backend: str, method: str, src_deg: float,
                   weights_dir: Path | None = None) -> tuple[xr.Dataset, str]:
    """Regrid a canonical dataset to 32x64; returns (result, backend actually used)."""
    target = weatherbench_grid(5.625)
    layout = check_regular_global(ds.latitude.values, ds.longitude.values, src_deg, "input")
    if layout == "centres" and np.isclose(src_deg, 5.625):
        return ds, "identity"  # already on the WeatherBench grid (e.g. the WB2 store)
    if backend == "xesmf":
        wdir = weights_dir or Path("results/era5/regrid_weights")
        wfile = wdir / f"{method}_{ds.sizes['latitude']}x{ds.sizes['longitude']}_to_32x64.nc"
        out = regrid_xesmf(ds, target, method, wfile, src_deg)
    else:
        out = regrid_xarray_regrid(ds, target, method)
    # guard against a backend returning another grid or order
    out = out.sortby("latitude").transpose(*ds[next(iter(ds.data_vars))].dims)
    np.testing.assert_allclose(out.latitude.values, target.latitude.values)
    np.testing.assert_allclose(out.longitude.values, target.longitude.values)
    return out, backend


def regrid_file(cfg: Config, group: str, period: str, raw, out: str | Path,
                weights_dir: str | Path | None = None) -> tuple[dict, xr.Dataset, xr.Dataset]:
    """Regrid one period's raw file (or the several files holding it) to `out` (NetCDF,
    canonical layout); return metrics and both datasets.

    The NaN check runs in the same dask pass as the regridding, so the input is read once;
    when it finds NaNs, nothing is written and the error says how many, where and in which file.
    """
    era5 = cfg.era5
    rcfg = era5["regrid"]
    raw = [Path(raw)] if isinstance(raw, (str, Path)) else [Path(p) for p in raw]
    out = Path(out)
    need = cfg.required[group]
    backend = choose_backend(rcfg["backend"])
    start = time.perf_counter()
    ds = open_raw(raw, group, need, era5["grid_deg"], era5["hours"], period, rcfg["time_chunk"],
                  years=era5["years"])
    try:
        return _regrid_open(ds, cfg, group, period, raw, out, backend, weights_dir, start)
    except BaseException:
        ds.close()  # see layout.open_raw: no NetCDF handle may be left to the collector
        raise


def _regrid_open(ds, cfg: Config, group: str, period: str, raw: list[Path], out: Path, backend: str,
                 weights_dir, start: float):
    era5 = cfg.era5
    rcfg = era5["regrid"]
    used_files = [Path(p) for p in ds.attrs["source_files"]]
    if group == "static":
        ds = ds.expand_dims(time=1)  # regrid code paths share one layout
    for name in ds.data_vars:
        ds[name] = ds[name].astype("float32")
    regridded, used = regrid_dataset(ds, backend, rcfg["method"], era5["grid_deg"],
                                     Path(weights_dir) if weights_dir else None)
    if group == "static":
        regridded = regridded.isel(time=0, drop=True)
        ds = ds.isel(time=0, drop=True)
    regridded = regridded.astype("float32")
    regridded.attrs = {
        "source_file": ", ".join(p.name for p in used_files),
        "regrid_backend": used,
        "regrid_method": rcfg["method"],
        "source_grid_deg": era5["grid_deg"],
        "target_grid": "WeatherBench 5.625 deg, 32 x 64, cell centres",
        "group": group,
        "period": period,
    }
    encoding = {v: {"dtype": "float32", "zlib": False} for v in regridded.data_vars}
    with atomic_path(out) as tmp:
        delayed = regridded.to_netcdf(tmp, engine="netcdf4", encoding=encoding, compute=False)
        try:
            _, nans = dask.compute(delayed, count_nans(ds))
        except Exception as err:  # a truncated HDF5 file often opens but fails on read
            where = raw[0] if len(raw) == 1 else _failing_file(err, used_files)
            raise InputError(where, f"cannot read data ({type(err).__name__}: {err}); "
                                    "the file is probably truncated or corrupt") from None
        problem = describe_nans(ds, nans, raw[0])
        if problem:
            raise problem
    seconds = time.perf_counter() - start
    n_fields = int(np.prod([ds.sizes[d] for d in ds.dims if d not in ("latitude", "longitude")] or [1]))
    n_fields *= len(ds.data_vars)
    return ({"backend": used, "fields": n_fields, "seconds": seconds,
             "fields_per_s": n_fields / max(seconds, 1e-9),
             "bytes_read": sum(p.stat().st_size for p in used_files), "files_read": len(used_files),
             "bytes_written": out.stat().st_size}, ds, regridded)


def _failing_file(err: Exception, files: list[Path]) -> str:
    """The file a read error came from when its message names it, else all of them."""
    text = str(err)
    hit = [p for p in files if str(p) in text or p.name in text]
    return str(hit[0]) if hit else ", ".join(map(str, files))
