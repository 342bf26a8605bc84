"""Which days each ERA5 split holds, and which time steps each yearly file must contain.

A split is configured as whole calendar years ([2010, 2011]) or as one date range
({start: 2015-06-01, end: 2015-08-31}, both days included). Raw and regridded files stay
one per calendar year (the unit of download and regridding); a file holds the steps of its
year that some split asks for, so a one-month test split downloads and checks one month.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

SPLITS = ("train", "val", "test")


def normalise_dates(years_cfg: dict) -> dict:
    """The same split entries with YAML dates (datetime.date) written as ISO strings."""
    out = {}
    for split, entry in years_cfg.items():
        if isinstance(entry, dict):
            entry = {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v
                     for k, v in entry.items()}
        out[split] = entry
    return out


def is_range(entry) -> bool:
    """True for a {start, end} date range, False for a list of years."""
    return isinstance(entry, dict)


def split_days(years_cfg: dict, split: str) -> pd.DatetimeIndex:
    """Every day (00 UTC) of one split, ascending."""
    entry = years_cfg[split]
    if is_range(entry):
        return pd.date_range(pd.Timestamp(entry["start"]), pd.Timestamp(entry["end"]), freq="D")
    days = [pd.date_range(f"{y}-01-01", f"{y}-12-31", freq="D") for y in sorted(entry)]
    return days[0].append(days[1:]) if len(days) > 1 else days[0]


def describe(years_cfg: dict, split: str) -> str:
    """A split as people write it: '2010-2013', '2010, 2012' or '2015-06-01 to 2015-08-31'."""
    entry = years_cfg[split]
    if is_range(entry):
        return f"{entry['start']} to {entry['end']}"
    years = sorted(entry)
    if years == list(range(years[0], years[-1] + 1)) and len(years) > 1:
        return f"{years[0]}-{years[-1]}"
    return ", ".join(map(str, years))


def with_hours(days: pd.DatetimeIndex, hours: list[int]) -> pd.DatetimeIndex:
    """The time steps of `days` at `hours` (UTC), ascending."""
    return pd.DatetimeIndex(sorted(d + pd.Timedelta(hours=h) for d in days for h in hours))


def split_times(years_cfg: dict, split: str, hours: list[int]) -> pd.DatetimeIndex:
    """Every time step of one split."""
    return with_hours(split_days(years_cfg, split), hours)


def all_years(years_cfg: dict) -> list[int]:
    """The calendar years any split touches: one raw and one regridded file each."""
    return sorted({int(y) for s in SPLITS for y in split_days(years_cfg, s).year.unique()})


def period_times(period: str, hours: list[int], years_cfg: dict | None = None) -> pd.DatetimeIndex:
    """The time steps a file of `period` (a year) must hold: the days of that year in any split
    (every day of it without a split config), at `hours`."""
    year_days = pd.date_range(f"{period}-01-01", f"{period}-12-31", freq="D")
    if years_cfg is not None:
        wanted = pd.DatetimeIndex([])
        for split in SPLITS:
            wanted = wanted.union(split_days(years_cfg, split))
        year_days = year_days.intersection(wanted)
    return with_hours(year_days, hours)


def first_day(years_cfg: dict) -> pd.Timestamp:
    """The earliest day of any split (the static fields' nominal date)."""
    return min(split_days(years_cfg, s)[0] for s in SPLITS)


def problems(years_cfg: dict) -> list[str]:
    """What is wrong with the split config: bad or reversed dates, overlapping splits."""
    out = []
    for split in SPLITS:
        entry = years_cfg[split]
        if not is_range(entry):
            continue
        try:
            start, end = pd.Timestamp(entry["start"]), pd.Timestamp(entry["end"])
        except ValueError as err:
            out.append(f"era5.years.{split}: not a date ({err})")
            continue
        if end < start:
            out.append(f"era5.years.{split}: end {entry['end']} is before start {entry['start']}")
    if out:
        return out
    seen: dict[str, pd.DatetimeIndex] = {}
    for split in SPLITS:
        days = split_days(years_cfg, split)
        for other, theirs in seen.items():
            common = days.intersection(theirs)
            if len(common):
                what = (str(common[0].year) if not (is_range(years_cfg[split]) or is_range(years_cfg[other]))
                        else f"{len(common)} day(s) from {common[0]:%Y-%m-%d}")
                out.append(f"era5.years: {what} is in both {other} and {split}; splits must not overlap")
        seen[split] = days
    return out


def gaps(years_cfg: dict, split: str) -> str | None:
    """How a split is broken ('2010, 2012 are not consecutive'), or None when it is one unbroken span."""
    days = split_days(years_cfg, split)
    if len(days) == (days[-1] - days[0]).days + 1:
        return None
    return f"era5.years.{split}: {describe(years_cfg, split)} are not consecutive"
