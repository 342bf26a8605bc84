"""Raw ERA5 sources other than the synthetic one: the Copernicus CDS and cloud Zarr stores.

Each writes one file per (group, period) in the CDS NetCDF layout, atomically, so that
every later stage reads the same kind of file whatever the source.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import xarray as xr

from ..io import InputError, atomic_path
from .channels import ARCO_STATIC_NAMES, CDS_DATASETS, GROUP_VARS
from .layout import NETCDF_MAGIC, canonicalise
from .periods import first_day, period_times

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- CDS
def cds_requests(group: str, period: str, need: dict, cfg_era5: dict) -> list[tuple[str, dict]]:
    """The CDS requests for one file: (part name, request) per month holding days of a split,
    each asking for those days only; or one request for static."""
    variables = [GROUP_VARS[group][v] for v in GROUP_VARS[group] if v in need["vars"]]
    base = {
        "product_type": ["reanalysis"],
        "variable": variables,
        "data_format": cfg_era5["cds"]["data_format"],
        "download_format": "unarchived",
    }
    if cfg_era5["grid_deg"] != 0.25:
        base["grid"] = [cfg_era5["grid_deg"], cfg_era5["grid_deg"]]
    if group == "pressure":
        base["pressure_level"] = [str(lev) for lev in need["levels"]]
    if group == "static":
        first = first_day(cfg_era5["years"])
        return [("static", {**base, "year": [str(first.year)], "month": [f"{first.month:02d}"],
                            "day": [f"{first.day:02d}"], "time": ["00:00"]})]
    hours = [f"{h:02d}:00" for h in cfg_era5["hours"]]
    days = period_times(period, [0], cfg_era5["years"])
    out = []
    for month in sorted(set(days.month)):
        in_month = days[days.month == month]
        out.append((f"{month:02d}", {**base, "year": [period], "month": [f"{month:02d}"],
                                     "day": [f"{d:02d}" for d in in_month.day], "time": hours}))
    return out


def _is_complete(path: Path, need_vars: list[str]) -> bool:
    """True when a downloaded part opens as NetCDF and holds the variables asked for."""
    try:
        with open(path, "rb") as fh:
            if not any(fh.read(8).startswith(m) for m in NETCDF_MAGIC):
                return False
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return all(v in ds.data_vars for v in need_vars)
    except Exception:
        return False


def default_cds_client():
    """A cdsapi client; the key comes from ~/.cdsapirc or CDSAPI_URL/CDSAPI_KEY, never from us."""
    import cdsapi

    return cdsapi.Client(quiet=True, progress=False)


def fetch_cds(out: Path, group: str, period: str, need: dict, cfg_era5: dict,
              client_factory=default_cds_client, sleep=time.sleep) -> None:
    """Download one (group, period) file from the CDS, month by month, resumably.

    Finished monthly parts sit in a hidden `.<name>.parts/` folder and are never fetched
    again; every download goes to a temporary name first. The parts are merged into
    `out` atomically and removed once `out` exists.
    """
    out = Path(out)
    parts_dir = out.with_name(f".{out.stem}.parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    dataset = CDS_DATASETS[group]
    client = None
    parts = []
    for name, request in cds_requests(group, period, need, cfg_era5):
        part = parts_dir / f"{name}.nc"
        parts.append(part)
        if part.exists() and _is_complete(part, need["vars"]):
            log.info("%s: already downloaded, skipping", part)
            continue
        client = client or client_factory()
        retries = cfg_era5["cds"]["retries"]
        for attempt in range(retries + 1):
            try:
                with atomic_path(part) as tmp:
                    client.retrieve(dataset, request, str(tmp))
                    if not _is_complete(tmp, need["vars"]):
                        raise InputError(tmp, f"CDS returned a file that is not NetCDF with "
                                              f"{', '.join(need['vars'])}")
                break
            except Exception as err:
                if attempt == retries:
                    raise InputError(part, f"CDS download failed after {retries + 1} attempt(s): "
                                           f"{type(err).__name__}: {err}") from None
                wait = min(60 * 2**attempt, 900)
                log.warning("%s: attempt %d failed (%s); retrying in %ds", part, attempt + 1, err, wait)
                sleep(wait)
    _merge_parts(parts, out)
    shutil.rmtree(parts_dir)


def _merge_parts(parts: list[Path], out: Path) -> None:
    if len(parts) == 1:
        with atomic_path(out) as tmp:
            shutil.copyfile(parts[0], tmp)
        return
    with xr.open_dataset(parts[0], engine="netcdf4") as first:
        tdim = "valid_time" if "valid_time" in first.dims else "time"
    with xr.open_mfdataset(parts, engine="netcdf4", combine="nested", concat_dim=tdim,
                           data_vars="minimal", coords="minimal", compat="override") as ds:
        with atomic_path(out) as tmp:
            ds.to_netcdf(tmp)


# --------------------------------------------------------------------------- Zarr (ARCO / WB2)
def open_cloud_store(store: str, token: str = "anon") -> xr.Dataset:
    """Open an ARCO-ERA5 or WeatherBench2 Zarr store lazily (gs:// or a local path)."""
    storage = {"token": token} if store.startswith("gs://") else None
    try:
        return xr.open_zarr(store, chunks={}, storage_options=storage, decode_timedelta=False)
    except Exception as err:
        raise InputError(store, f"cannot open Zarr store ({type(err).__name__}: {err})") from None


def fetch_zarr(out: Path, group: str, period: str, need: dict, cfg_era5: dict,
               opener=open_cloud_store) -> None:
    """Subset a cloud Zarr store to one (group, year) file in the CDS NetCDF layout."""
    store = cfg_era5["arco"]["store"]
    ds = opener(store, cfg_era5["arco"]["token"])
    names = ARCO_STATIC_NAMES if group == "static" else GROUP_VARS[group]
    wanted = {names[v]: v for v in GROUP_VARS[group] if v in need["vars"]}
    missing = [long for long in wanted if long not in ds.data_vars]
    if missing:
        raise InputError(store, f"store lacks variable(s) {', '.join(missing)}")
    ds = canonicalise(ds[list(wanted)]).rename(wanted)
    if group == "pressure":
        levels = np.asarray(ds.level.values)
        lost = [lev for lev in need["levels"] if lev not in levels]
        if lost:
            raise InputError(store, f"store lacks pressure level(s) {lost}")
        ds = ds.sel(level=need["levels"])
    if group == "static":
        if "time" in ds.dims:
            ds = ds.isel(time=[0])
    else:
        want = period_times(period, cfg_era5["hours"], cfg_era5["years"])
        have = ds.indexes["time"]
        lost = want.difference(have)
        if len(lost):
            raise InputError(store, f"store lacks {len(lost)} time step(s) of {period}, first {lost[0]}")
        ds = ds.sel(time=want)
    ds = ds.rename({k: v for k, v in (("time", "valid_time"), ("level", "pressure_level")) if k in ds.dims})
    encoding = {v: {"dtype": "float32"} for v in ds.data_vars}
    from dask.diagnostics import ProgressBar

    with atomic_path(out) as tmp, ProgressBar(minimum=5):
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)

