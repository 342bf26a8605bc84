"""Write ERA5 files exactly as the CDS does: the 2024+ layout and the legacy packed layout.

Used by the synthetic source (and by tests that need real-format fixtures). Writes
time chunk by time chunk, so a 0.25 deg year never has to sit in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import netCDF4
import numpy as np
import pandas as pd

from ..io import atomic_path
from .channels import GROUP_VARS

META = {
    "z": ("m**2 s**-2", "Geopotential", "geopotential", 129, (-2.0e4, 3.4e5)),
    "t": ("K", "Temperature", "air_temperature", 130, (150.0, 350.0)),
    "u": ("m s**-1", "U component of wind", "eastward_wind", 131, (-160.0, 160.0)),
    "v": ("m s**-1", "V component of wind", "northward_wind", 132, (-160.0, 160.0)),
    "q": ("kg kg**-1", "Specific humidity", "specific_humidity", 133, (0.0, 0.05)),
    "t2m": ("K", "2 metre temperature", "unknown", 167, (150.0, 350.0)),
    "u10": ("m s**-1", "10 metre U wind component", "unknown", 165, (-100.0, 100.0)),
    "v10": ("m s**-1", "10 metre V wind component", "unknown", 166, (-100.0, 100.0)),
    "lsm": ("(0 - 1)", "Land-sea mask", "land_binary_mask", 172, (0.0, 1.0)),
}
STATIC_Z = ("m**2 s**-2", "Geopotential", "geopotential", 129, (-1.0e4, 6.0e4))


def _meta(group: str, var: str):
    return STATIC_Z if (group == "static" and var == "z") else META[var]


def write_era5_netcdf(path, group: str, lat: np.ndarray, lon: np.ndarray,
                      times: pd.DatetimeIndex, levels: list[int] | None,
                      chunks: Iterable[tuple[slice, dict[str, np.ndarray]]],
                      variables: list[str], layout: str = "new", history: str = "") -> Path:
    """Write one CDS-style file atomically.

    `chunks` yields (time slice, {var: array}) with arrays shaped (t, level, lat, lon)
    for pressure files and (t, lat, lon) otherwise; lat must be ordered as `lat`.
    layout "new": CDS 2024+ (valid_time int64 seconds since 1970, pressure_level, float32,
    number/expver); "old": legacy CDS (time hours since 1900, level, int16 packed).
    """
    assert layout in ("new", "old")
    assert set(variables) <= set(GROUP_VARS[group])
    new = layout == "new"
    tdim, ldim = ("valid_time", "pressure_level") if new else ("time", "level")
    final = Path(path)
    with atomic_path(final) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4" if new else "NETCDF3_64BIT_OFFSET") as nc:
            nc.setncatts({
                "Conventions": "CF-1.7" if new else "CF-1.6",
                "institution": "European Centre for Medium-Range Weather Forecasts",
                "GRIB_centre": "ecmf",
                "history": history,
            })
            nc.createDimension(tdim, len(times) if new else None)
            if group == "pressure":
                nc.createDimension(ldim, len(levels))
            nc.createDimension("latitude", lat.size)
            nc.createDimension("longitude", lon.size)
            ftype = "f8" if new else "f4"
            if new:
                nc.createVariable("number", "i8")[...] = 0
                tv = nc.createVariable(tdim, "i8", (tdim,))
                tv.setncatts({"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian",
                              "standard_name": "time", "long_name": "time"})
                tv[:] = (times - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
                ev = nc.createVariable("expver", str, (tdim,))
                ev[:] = np.array(["0001"] * len(times), dtype=object)
            else:
                tv = nc.createVariable(tdim, "i4", (tdim,))
                tv.setncatts({"units": "hours since 1900-01-01 00:00:00.0", "calendar": "gregorian",
                              "long_name": "time"})
                tv[: len(times)] = (times - pd.Timestamp("1900-01-01")) // pd.Timedelta(hours=1)
            if group == "pressure":
                lv = nc.createVariable(ldim, ftype if new else "i4", (ldim,))
                lv.setncatts({"units": "hPa" if new else "millibars", "long_name": "pressure",
                              "positive": "down", "standard_name": "air_pressure"})
                lv[:] = levels
            for name, vals, std in (("latitude", lat, "latitude"), ("longitude", lon, "longitude")):
                cv = nc.createVariable(name, ftype, (name,))
                cv.setncatts({"units": f"degrees_{'north' if name == 'latitude' else 'east'}",
                              "standard_name": std, "long_name": std})
                cv[:] = vals
            dims = (tdim,) + ((ldim,) if group == "pressure" else ()) + ("latitude", "longitude")
            out = {}
            for var in variables:
                units, long_name, std, param, (lo, hi) = _meta(group, var)
                if new:
                    chunk = (1,) + ((len(levels),) if group == "pressure" else ()) + (lat.size, lon.size)
                    dv = nc.createVariable(var, "f4", dims, fill_value=np.float32(np.nan), chunksizes=chunk)
                else:
                    dv = nc.createVariable(var, "i2", dims, fill_value=np.int16(-32767))
                    scale = (hi - lo) / (2**16 - 4)
                    dv.setncatts({"scale_factor": scale, "add_offset": (hi + lo) / 2,
                                  "missing_value": np.int16(-32767)})
                dv.setncatts({"units": units, "long_name": long_name, "standard_name": std,
                              "GRIB_paramId": param})
                if new:  # number and expver are auxiliary coordinates in CDS files
                    dv.coordinates = "number expver"

                out[var] = dv
            for tslice, arrays in chunks:
                for var in variables:
                    out[var][tslice] = arrays[var]
    return final
