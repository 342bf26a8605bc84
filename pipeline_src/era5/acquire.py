"""Stage 1: acquire raw ERA5 for one (group, period) from the configured source."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..io import ConfigError
from .layout import open_raw
from .sources import fetch_cds, fetch_zarr
from .synthetic import write_synthetic

FETCHERS = {"synthetic": write_synthetic, "cds": fetch_cds, "arco": fetch_zarr}


def acquire(cfg: Config, group: str, period: str, out: str | Path) -> dict:
    """Fetch or generate one raw file, check it as the regrid stage will, return metrics."""
    out = Path(out)
    need = cfg.required.get(group)
    if need is None:
        raise ConfigError(None, f"no configured channel needs the {group!r} file group")
    era5 = cfg.era5
    start = time.perf_counter()
    if not out.exists():  # a finished file is never fetched again
        FETCHERS[era5["source"]](out, group, period, need, era5)
    # check it exactly as the regrid stage will, so a bad download fails here, by name
    with open_raw(out, group, need, era5["grid_deg"], era5["hours"], period, time_chunk=None,
                  years=era5["years"]) as ds:
        n_times = ds.sizes.get("time", 1)
    seconds = time.perf_counter() - start
    fields = n_times * len(need["vars"]) * max(1, len(need["levels"]))
    size = out.stat().st_size
    return {"bytes_written": size, "fields": fields, "seconds": seconds,
            "fields_per_s": fields / max(seconds, 1e-9), "mb_per_s": size / 1e6 / max(seconds, 1e-9)}
