"""Regular lat-lon grids: the CDS source grid and the WeatherBench 5.625 deg target grid."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..io import InputError


def cds_grid(deg: float) -> tuple[np.ndarray, np.ndarray]:
    """CDS/ARCO layout: latitude 90 -> -90 including the poles, longitude 0 -> 360 - deg."""
    n_lat = int(round(180 / deg)) + 1
    n_lon = int(round(360 / deg))
    lat = np.linspace(90.0, -90.0, n_lat)
    lon = np.arange(n_lon) * deg
    return lat, lon


def weatherbench_grid(deg: float = 5.625) -> xr.Dataset:
    """WeatherBench grid: ascending cell-centre latitudes (no poles), longitudes from 0.

    Built explicitly (xESMF's grid_global is offset by half a cell in longitude).
    Carries cell bounds (lat_b, lon_b) for conservative regridding.
    """
    n_lat = int(round(180 / deg))
    n_lon = int(round(360 / deg))
    lat = -90 + deg / 2 + deg * np.arange(n_lat)
    lon = deg * np.arange(n_lon)
    lat_b = -90 + deg * np.arange(n_lat + 1)
    lon_b = -deg / 2 + deg * np.arange(n_lon + 1)
    return xr.Dataset(
        coords={
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
            "lat_b": ("lat_b", lat_b),
            "lon_b": ("lon_b", lon_b),
        }
    )


def describe_grid(lat: np.ndarray, lon: np.ndarray) -> str:
    """A short human description of a lat-lon grid, for error messages."""
    return (f"{lat.size}x{lon.size} (lat {lat.min():g}..{lat.max():g}, "
            f"lon {lon.min():g}..{lon.max():g})")


def check_regular_global(lat: np.ndarray, lon: np.ndarray, deg: float, path) -> str:
    """Check a global regular grid of spacing `deg`; return 'poles' or 'centres'.

    Accepts the pole-inclusive CDS/ARCO layout and the cell-centred WeatherBench
    layout; anything else raises InputError naming the file and the grid found.
    """
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    found = describe_grid(lat, lon) if lat.size and lon.size else "empty"
    n_lon = int(round(360 / deg))
    expect = f"a global {deg:g} deg grid ({n_lon} longitudes)"
    if lon.size != n_lon or lat.size < 2:
        raise InputError(path, f"unexpected grid {found}; expected {expect}")
    for name, axis in (("latitude", np.sort(lat)), ("longitude", np.sort(lon % 360))):
        steps = np.diff(axis)
        if not np.allclose(steps, deg, atol=1e-4 * deg):
            raise InputError(path, f"unexpected grid {found}: {name} spacing "
                                   f"{steps.min():g}..{steps.max():g}, expected {deg:g}")
    if lat.size == int(round(180 / deg)) + 1 and np.isclose(lat.max(), 90) and np.isclose(lat.min(), -90):
        return "poles"
    if lat.size == int(round(180 / deg)) and np.isclose(lat.max(), 90 - deg / 2):
        return "centres"
    raise InputError(path, f"unexpected grid {found}: latitudes do not span the globe "
                           f"(expected 90..-90 or cell centres for {deg:g} deg)")
