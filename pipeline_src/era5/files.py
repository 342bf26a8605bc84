"""ERA5 NetCDF already on disk (era5.source files): which files hold a period, and when to redo it.

Imported by the Snakefile at parse time, so it stays light (no xarray).
"""

from __future__ import annotations

import glob
import hashlib
import os

from .periods import first_day, period_times


def match_files(patterns, group: str, period: str, years: dict) -> list[str]:
    """The user's NetCDF files for one (group, period) (era5.source files), sorted.

    Each pattern is a glob in which `{year}` stands for the period's year (the first year of
    any split for the static group); `~` and environment variables are expanded. A pattern
    matching nothing is returned as it is, so Snakemake reports it as a missing input.
    """
    year = str(first_day(years).year) if period == "static" else period
    out: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        concrete = os.path.expandvars(os.path.expanduser(pattern)).replace("{year}", year)
        hits = sorted(glob.glob(concrete))
        out += hits or [concrete]
    return list(dict.fromkeys(out))


def period_fingerprint(period: str, hours: list[int], years: dict) -> str:
    """A short hash of the time steps a (group, period) file holds: a rerun trigger that changes
    only when a split change alters that year's steps."""
    if period == "static":
        return f"static-{first_day(years):%Y%m%d}"
    times = period_times(period, hours, years)
    return hashlib.sha256(times.asi8.tobytes()).hexdigest()[:12]
