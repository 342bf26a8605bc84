"""Forecasts and their verifying truth in WeatherBench2's layout, so that WB2's own
`scripts/evaluate.py` (or anyone with xarray) can score them beside the leaderboard.

Zarr stores (format 2, as WB2 reads them) with dims `time` (initialisation for forecasts,
valid time for the truth), `prediction_timedelta`, `latitude` ascending, `longitude`
(0-360) and `level` (hPa) for pressure-level variables; variables under WB2's names
(`geopotential`, `temperature`, `2m_temperature`, `10m_u_component_of_wind`, ...) in
physical units. Channels WB2 has no name for keep the pipeline's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..era5.channels import PRESSURE_VARS, SINGLE_VARS  # the channel catalogue (as config.py reads it)
from ..io import InputError, atomic_path

STATIC_NAMES = {"lsm": "land_sea_mask"}


def wb2_name(channel: str) -> tuple[str, int | None]:
    """(WB2 variable name, pressure level or None) of a channel: z_500 -> (geopotential, 500)."""
    var, _, level = channel.partition("_")
    if var in PRESSURE_VARS and level.isdigit():
        return PRESSURE_VARS[var], int(level)
    return SINGLE_VARS.get(channel, STATIC_NAMES.get(channel, channel)), None


def wb2_dataset(fields: np.ndarray, times, channels: list[str], units: list[str], latitudes, longitudes,
                lead_hours: list[int] | None = None) -> xr.Dataset:
    """Fields (time, [lead,] channel, lat, lon) as a WB2 dataset; with lead_hours a forecast
    (time = initialisation, prediction_timedelta), without it the truth (time = valid time)."""
    lat = np.asarray(latitudes, np.float64)
    order = np.argsort(lat)  # WB2 wants latitude ascending
    fields = np.asarray(fields, np.float32)[..., order, :]
    head = ("time", "prediction_timedelta") if lead_hours is not None else ("time",)
    coords = {"time": pd.DatetimeIndex(times).values, "latitude": lat[order],
              "longitude": np.mod(np.asarray(longitudes, np.float64), 360.0)}
    if lead_hours is not None:
        coords["prediction_timedelta"] = pd.to_timedelta(lead_hours, unit="h").values
    axis = len(head)  # the channel axis
    by_name: dict[str, list[tuple[int | None, int]]] = {}
    for i, channel in enumerate(channels):
        name, level = wb2_name(channel)
        by_name.setdefault(name, []).append((level, i))
    data = {}
    for name, members in by_name.items():
        unit = units[members[0][1]]
        if members[0][0] is None:
            data[name] = xr.Variable((*head, "latitude", "longitude"), np.take(fields, members[0][1], axis=axis),
                                     {"units": unit})
            continue
        members.sort()
        stacked = np.stack([np.take(fields, i, axis=axis) for _, i in members], axis=axis)
        data[name] = xr.DataArray(stacked, dims=(*head, "level", "latitude", "longitude"),
                                  coords={"level": [lev for lev, _ in members]}, attrs={"units": unit})
    ds = xr.Dataset(data, coords=coords)
    if "level" in ds.coords:
        ds["level"].attrs["units"] = "hPa"
    return ds


def write_wb2(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a WB2 dataset as a Zarr (format 2) store, atomically (one chunk per initialisation)."""
    chunks = {d: (1 if d == "time" else -1) for d in ds.dims}
    with atomic_path(path) as tmp:
        ds.chunk(chunks).to_zarr(tmp, zarr_format=2, consolidated=True)
    return Path(path)


def truth_dataset(data, init_times: np.ndarray, lead_hours: list[int], channels: list[str],
                  units: list[str]) -> xr.Dataset:
    """The verifying fields of every valid time the forecasts reach, read from the split."""
    split_times = pd.DatetimeIndex(data.times)
    valid = pd.DatetimeIndex(sorted({pd.Timestamp(t) + pd.Timedelta(hours=h) for t in init_times for h in lead_hours}))
    index = split_times.get_indexer(valid)
    if (index < 0).any():
        raise InputError(data.split.store, f"valid times missing from the split: {list(valid[index < 0][:3])}")
    fields = data.split.read(list(index), [data.split.channels.index(c) for c in channels])
    return wb2_dataset(fields, valid, channels, units, data.split.latitudes, data.split.longitudes)
