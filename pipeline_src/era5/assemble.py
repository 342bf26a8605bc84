"""Stage 3: assemble regridded files into model-ready Zarr: channels, splits, stats, climatology.

Outputs (one folder):
  {train,val,test}.zarr  variable `fields` (time, channel, latitude, longitude) float32,
                         one channel of one time step per chunk, in shards of one channel
                         over `shard_steps` steps: random access by time, and a reader of some
                         channels (a D-CHAG rank's partitions, at any TP size) reads those only
  normalization.json     per-channel mean/std over the training years only, and the RMS of
                         the departures from the climatology (anomaly_std; forecasters in
                         anomaly space divide by it); static_channels lists the time-invariant
  climatology.zarr       `climatology` (dayofyear 1..366, hour, channel, latitude, longitude):
                         training-years mean per day of year and hour, smoothed over a
                         circular window of `climatology_window_days`
  manifest.json          what is where: channels, splits, times, grid, source, backend
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from ..config import SPLITS, Config
from ..io import InputError, atomic_path, tree_size, write_json
from . import periods
from .channels import G, Channel, channel_units

log = logging.getLogger(__name__)
CLIMATOLOGY_SHARD_DAYS = 61


def fields_encoding(shard_steps: int, grid: tuple[int, int] = (32, 64)) -> dict:
    """Zarr encoding of a split's fields: a chunk per (time step, channel), a shard per channel
    and `shard_steps` steps (a shard index of shard_steps entries, read with each lookup)."""
    return {"chunks": (1, 1, *grid), "shards": (shard_steps, 1, *grid)}


def climatology_encoding(hours: int, grid: tuple[int, int] = (32, 64)) -> dict:
    """Zarr encoding of the climatology: a chunk per (day of year, channel), a shard per channel and 61 days."""
    return {"chunks": (1, hours, 1, *grid), "shards": (CLIMATOLOGY_SHARD_DAYS, hours, 1, *grid)}


def _open_regridded(path: Path, shard: int) -> xr.Dataset:
    try:
        ds = xr.open_dataset(path, engine="netcdf4", chunks={"time": shard} if shard else {})
    except Exception as err:
        raise InputError(path, f"cannot read regridded file ({type(err).__name__}: {err})") from None
    if (ds.sizes.get("latitude"), ds.sizes.get("longitude")) != (32, 64):
        sizes = dict(ds.sizes)
        ds.close()  # not left to the garbage collector (see assemble)
        raise InputError(path, f"expected the 32x64 grid, found {sizes}")
    return ds


def channel_stack(channels: list[Channel], pressure: xr.Dataset | None, single: xr.Dataset | None,
                  static: xr.Dataset | None) -> xr.DataArray:
    """Stack the configured channels of one year into (time, channel, latitude, longitude)."""
    timed = pressure if pressure is not None else single
    if timed is None:
        raise InputError(None, "at least one time-varying channel is needed")
    pieces = []
    for ch in channels:
        if ch.group == "pressure":
            da = pressure[ch.var].sel(level=ch.level, drop=True)
        elif ch.group == "single":
            da = single[ch.var]
        else:
            da = static[ch.var] / G if ch.name == "orography" else static[ch.var]
            da = da.expand_dims(time=timed.time).chunk({"time": timed.chunks["time"]} if timed.chunks else {})
        pieces.append(da.astype("float32").drop_vars([c for c in da.coords if c not in da.dims]))
    stacked = xr.concat(pieces, dim=pd.Index([c.name for c in channels], name="channel"),
                        coords="minimal", compat="override", join="exact")
    return stacked.transpose("time", "channel", "latitude", "longitude")


class RunningStats:
    """Per-channel mean and variance merged block by block (Chan et al.), float64."""

    def __init__(self, n_channels: int):
        self.n = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def update(self, block: np.ndarray) -> None:
        """Add a (time, channel, lat, lon) block."""
        x = block.astype(np.float64).transpose(1, 0, 2, 3).reshape(block.shape[1], -1)
        nb = x.shape[1]
        mb = x.mean(axis=1)
        m2b = ((x - mb[:, None]) ** 2).sum(axis=1)
        delta = mb - self.mean
        tot = self.n + nb
        self.mean = self.mean + delta * nb / tot
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / tot
        self.n = tot

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        return np.sqrt(self.m2 / self.n)


class ClimatologyAccumulator:
    """Sums and counts per (day of year, hour) for a smoothed climatology."""

    def __init__(self, hours: list[int], shape: tuple[int, ...]):
        self.hours = list(hours)
        self.sums = np.zeros((366, len(hours), *shape))
        self.counts = np.zeros((366, len(hours)))

    def update(self, times: pd.DatetimeIndex, block: np.ndarray) -> None:
        """Add a (time, channel, lat, lon) block with its timestamps."""
        doy = np.asarray(times.day_of_year) - 1
        hour = np.array([self.hours.index(h) for h in times.hour])
        keys = doy * len(self.hours) + hour
        if np.unique(keys).size == keys.size:  # the usual case: a block shorter than a year
            self.sums[doy, hour] += block
            self.counts[doy, hour] += 1
        else:  # np.add.at accumulates repeated indices but is much slower
            np.add.at(self.sums, (doy, hour), block)
            np.add.at(self.counts, (doy, hour), 1)

    def result(self, window: int) -> np.ndarray:
        """Mean over a circular `window`-day running window; float32 (366, hour, ...)."""
        sums, counts = _circular_window_sum(self.sums, window), _circular_window_sum(self.counts, window)
        empty = counts == 0
        if empty.all():
            raise InputError(None, "no training data for the climatology")
        if empty.any():  # e.g. day 366 with no leap year and a 1-day window: borrow the day before
            for d, h in zip(*np.nonzero(empty)):
                src = d
                while counts[src, h] == 0:
                    src = (src - 1) % 366
                sums[d, h], counts[d, h] = sums[src, h], counts[src, h]
        shape = counts.shape + (1,) * (sums.ndim - 2)
        return (sums / counts.reshape(shape)).astype(np.float32)


def _names(channels: list[Channel]) -> np.ndarray:
    return np.array([c.name for c in channels], dtype=object)


def _circular_window_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Sum over a `window`-long window centred on each index of axis 0, wrapping around."""
    half = window // 2
    n = x.shape[0]
    ext = np.concatenate([x[n - half:], x, x[: window - half - 1]], axis=0)
    csum = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(ext, axis=0)], axis=0)
    return csum[window:window + n] - csum[:n]


def assemble(cfg: Config, regridded: dict[tuple[str, str], Path], out_dir: str | Path) -> dict:
    """Write splits, normalisation stats, climatology and manifest under `out_dir`."""
    era5 = cfg.era5
    acfg = era5["assemble"]
    shard = acfg["shard_steps"]
    channels = cfg.channels
    groups = {c.group for c in channels}
    out_dir = Path(out_dir)
    start = time.perf_counter()
    backends = set()
    splits_meta = {}
    # Every handle is closed here, on errors too: a NetCDF handle finalised by the garbage
    # collector in the middle of another HDF5 call can crash HDF5 (see era5.layout.open_raw).
    opened: list[xr.Dataset] = []
    try:
        static = None
        if "static" in groups:
            static = _open_regridded(regridded[("static", "static")], 0)
            opened.append(static)
            static.load()
        for split in SPLITS:
            want = periods.split_times(era5["years"], split, era5["hours"])
            years = sorted(set(want.year))
            stacks = []
            for year in years:
                files = {}
                for g in ("pressure", "single"):
                    if g in groups:
                        files[g] = _open_regridded(regridded[(g, str(year))], shard)
                        opened.append(files[g])
                backends.update(ds.attrs.get("regrid_backend", "?") for ds in files.values())
                stack = channel_stack(channels, files.get("pressure"), files.get("single"), static)
                mine = want[want.year == year]
                lost = mine.difference(pd.DatetimeIndex(stack.time.values))
                if len(lost):
                    raise InputError(regridded[(next(iter(files)), str(year))],
                                     f"lacks {len(lost)} time step(s) of the {split} split, first {lost[0]}; "
                                     f"regridded for other splits? rerun era5_regrid")
                stacks.append(stack.sel(time=mine))
            fields = xr.concat(stacks, dim="time").chunk({"time": shard, "channel": -1})
            target = out_dir / f"{split}.zarr"
            # object dtype: Zarr v3 has a specified variable-length string type, not a fixed one
            ds = fields.to_dataset(name="fields").assign_coords(channel=_names(channels))
            ds["fields"].attrs = {"units": "mixed; see normalization.json", "description": "ERA5 channels"}
            ds.attrs = {"split": split, "period": periods.describe(era5["years"], split), "source": era5["source"],
                        "grid": "5.625 deg, 32 x 64, ascending cell-centre latitudes"}
            enc = {"fields": fields_encoding(shard)}
            with atomic_path(target) as tmp:
                ds.to_zarr(tmp, mode="w", zarr_format=3, encoding=enc, consolidated=False)
            times = pd.DatetimeIndex(fields.time.values)
            splits_meta[split] = {"path": target.name, "years": years, "period": periods.describe(era5["years"], split),
                                  "n_times": len(times),
                                  "first": str(times[0]), "last": str(times[-1]), "bytes": tree_size(target)}
    finally:
        for ds in opened:
            ds.close()
    stats, clim = _train_statistics(out_dir / "train.zarr", channels, era5["hours"], shard)
    clim_fields = clim.result(acfg["climatology_window_days"])
    covered = int((clim.counts.sum(axis=1) > 0).sum())
    if covered < 365:
        log.warning("the training split covers %d of 366 days of the year; the climatology of the "
                    "other days is taken from the nearest earlier covered day after a %d-day smoothing",
                    covered, acfg["climatology_window_days"])
    anomaly_rms = _anomaly_rms(out_dir / "train.zarr", clim_fields, era5["hours"], shard)
    write_json(out_dir / "normalization.json", {
        "channels": [c.name for c in channels],
        "mean": stats.mean.tolist(),
        "std": stats.std.tolist(),
        "anomaly_std": anomaly_rms.tolist(),
        "static_channels": [c.name for c in channels if c.group == "static"],
        "years": sorted(set(periods.split_days(era5["years"], "train").year)),
        "period": periods.describe(era5["years"], "train"),
        "n_values_per_channel": int(stats.n),
        "note": "population mean/std over time, latitude and longitude of the training years (unweighted); "
                "anomaly_std: root mean square of the departures from climatology.zarr over the same values",
    })
    clim_ds = xr.Dataset(
        {"climatology": (("dayofyear", "hour", "channel", "latitude", "longitude"), clim_fields)},
        coords={"dayofyear": np.arange(1, 367), "hour": era5["hours"], "channel": _names(channels),
                "latitude": fields.latitude.values,
                "longitude": fields.longitude.values},
        attrs={"period": periods.describe(era5["years"], "train"),
               "window_days": acfg["climatology_window_days"],
               "method": "mean per day of year and hour, circular running window over day of year"},
    )
    with atomic_path(out_dir / "climatology.zarr") as tmp:
        clim_ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False,
                        encoding={"climatology": climatology_encoding(len(era5["hours"]))})
    manifest = {
        "source": era5["source"],
        "regrid_backend": sorted(backends),
        "regrid_method": era5["regrid"]["method"],
        "channels": [c.name for c in channels],
        "units": {c.name: channel_units(c) for c in channels},
        "hours": era5["hours"],
        "grid": {"n_lat": 32, "n_lon": 64, "deg": 5.625},
        "splits": splits_meta,
        "normalization": "normalization.json",
        "climatology": "climatology.zarr",
    }
    write_json(out_dir / "manifest.json", manifest)
    seconds = time.perf_counter() - start
    n_fields = sum(m["n_times"] for m in splits_meta.values()) * len(channels)
    return {"seconds": seconds, "fields": n_fields, "fields_per_s": n_fields / max(seconds, 1e-9),
            "bytes_written": tree_size(out_dir), "n_channels": len(channels)}


def _anomaly_rms(train: Path, clim_fields: np.ndarray, hours, shard) -> np.ndarray:
    """Per-channel root mean square of (training field - its day-of-year x hour climatology)."""
    ds = xr.open_zarr(train, consolidated=False, chunks=None)
    fields = ds["fields"]
    times = pd.DatetimeIndex(ds.time.values)
    sums, n = np.zeros(fields.shape[1]), 0
    for lo in range(0, fields.sizes["time"], shard):
        t = times[lo:lo + shard]
        hour = np.array([list(hours).index(h) for h in t.hour])
        anomaly = fields.isel(time=slice(lo, lo + shard)).values - clim_fields[np.asarray(t.day_of_year) - 1, hour]
        sums += (anomaly.astype(np.float64) ** 2).sum(axis=(0, 2, 3))
        n += anomaly.shape[0] * anomaly.shape[2] * anomaly.shape[3]
    ds.close()
    return np.sqrt(sums / n)


def _train_statistics(train: Path, channels, hours, shard):
    """One pass over the training split: running mean/std and climatology sums."""
    ds = xr.open_zarr(train, consolidated=False, chunks=None)  # plain slices: no dask per 1-step chunk
    fields = ds["fields"]
    stats = RunningStats(len(channels))
    clim = ClimatologyAccumulator(hours, fields.shape[1:])
    times = pd.DatetimeIndex(ds.time.values)
    for lo in tqdm(range(0, fields.sizes["time"], shard), desc="train statistics", unit="block",
                   disable=None):
        block = fields.isel(time=slice(lo, lo + shard)).values
        stats.update(block)
        clim.update(times[lo:lo + shard], block)
    return stats, clim
