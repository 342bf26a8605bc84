"""Scores of one forecast system over initialisation times: per-init metrics, error maps, tables.

Every system (a trained model, climatology, persistence) is scored the same way, batch by
batch, and written as per_init.nc (the per-initialisation metrics the scorecard bootstraps)
and a long-form metrics.csv.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from ..io import InputError, atomic_path
from .metrics import AGGREGATES, CONVENTION, CONVENTIONS, PER_INIT, aggregate, per_init

CSV_FIELDS = ("variant", "variable", "units", "lead_hours", "metric", "convention", "value", "n_inits")


@dataclass
class Scores:
    """Per-init metrics and squared-error sums of one system, for leads x variables on one grid."""

    system: str
    lead_hours: list[int]
    variables: list[str]
    units: list[str]
    weights: np.ndarray
    init_times: list[np.datetime64] = field(default_factory=list)
    per: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in PER_INIT})
    sq_error: np.ndarray | None = None  # (lead, variable, lat, lon) sums over inits
    count: int = 0

    def add(self, init_times, forecast: np.ndarray, truth: np.ndarray, climatology: np.ndarray) -> None:
        """Score (n, lead, variable, lat, lon) physical fields of n initialisation times."""
        forecast = np.asarray(forecast, np.float64)
        truth = np.asarray(truth, np.float64)
        values = per_init(forecast, truth, climatology, self.weights)  # each (n, lead, variable)
        for k in PER_INIT:
            self.per[k].extend(values[k])
        self.init_times.extend(np.asarray(init_times, dtype="datetime64[ns]"))
        sq = ((forecast - truth) ** 2).sum(axis=0)
        self.sq_error = sq if self.sq_error is None else self.sq_error + sq
        self.count += forecast.shape[0]

    def state(self) -> dict:
        """Picklable content, for gathering across ranks."""
        return {"init_times": self.init_times, "per": self.per, "sq_error": self.sq_error, "count": self.count}

    def merge(self, state: dict) -> None:
        """Add another rank's state (same system, disjoint initialisation times)."""
        self.init_times.extend(state["init_times"])
        for k in PER_INIT:
            self.per[k].extend(state["per"][k])
        if state["sq_error"] is not None:
            self.sq_error = state["sq_error"] if self.sq_error is None else self.sq_error + state["sq_error"]
        self.count += state["count"]

    def to_dataset(self) -> xr.Dataset:
        """per-init metrics (init_time, lead_hours, variable), sorted by initialisation time."""
        if not self.init_times:
            raise InputError(None, f"{self.system}: no initialisation time was scored")
        order = np.argsort(np.asarray(self.init_times))
        coords = {"init_time": np.asarray(self.init_times)[order], "lead_hours": self.lead_hours,
                  "variable": self.variables}
        data = {k: (("init_time", "lead_hours", "variable"), np.stack(self.per[k])[order]) for k in PER_INIT}
        ds = xr.Dataset(data, coords=coords)
        ds["units"] = ("variable", self.units)
        ds.attrs = {"system": self.system, "conventions": CONVENTIONS}
        return ds

    def rmse_map(self, latitudes, longitudes) -> xr.DataArray:
        """RMSE per grid cell, (lead_hours, variable, latitude, longitude)."""
        return xr.DataArray(np.sqrt(self.sq_error / self.count), name="rmse",
                            dims=("lead_hours", "variable", "latitude", "longitude"),
                            coords={"lead_hours": self.lead_hours, "variable": self.variables,
                                    "latitude": latitudes, "longitude": longitudes},
                            attrs={"description": f"{self.system}: sqrt(mean over inits of squared error)"})


def read_per_init(path: str | Path) -> xr.Dataset:
    """A per_init.nc written by write_per_init, loaded and closed."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a per-init metrics file ({err})") from None
    missing = [k for k in PER_INIT if k not in ds]
    if missing:
        raise InputError(path, f"has no {', '.join(missing)} (written by an older version): rerun its "
                               f"evaluation, e.g. snakemake -R evaluate evaluate_baselines")
    return ds


def write_per_init(ds: xr.Dataset, path: str | Path) -> None:
    """Write per-init metrics as NetCDF, atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


def table_rows(ds: xr.Dataset) -> list[dict]:
    """Long-form rows (variant, variable, units, lead_hours, metric, convention, value, n_inits)."""
    agg = aggregate({k: ds[k].values for k in PER_INIT}, axis=0)  # each (lead, variable)
    rows = []
    for li, lead in enumerate(ds["lead_hours"].values):
        for vi, var in enumerate(ds["variable"].values):
            for metric in AGGREGATES:
                rows.append({"variant": ds.attrs["system"], "variable": str(var),
                             "units": str(ds["units"].values[vi]), "lead_hours": int(lead), "metric": metric,
                             "convention": CONVENTION[metric], "value": float(agg[metric][li, vi]),
                             "n_inits": int(ds.sizes["init_time"])})
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Write long-form metric rows as CSV, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_FIELDS})


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a metrics CSV, values as floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["value"], row["lead_hours"] = float(row["value"]), int(row["lead_hours"])
    return rows
