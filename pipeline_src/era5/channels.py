"""The ERA5 channel catalogue: names like z_500 or t2m, the raw variable behind each, presets."""

from __future__ import annotations

from dataclasses import dataclass

from ..io import ConfigError

G = 9.80665  # standard gravity, m s-2: orography = surface geopotential / G

# All 37 ERA5 pressure levels (hPa).
ERA5_LEVELS = (1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 125, 150, 175, 200, 225, 250, 300,
               350, 400, 450, 500, 550, 600, 650, 700, 750, 775, 800, 825, 850, 875, 900,
               925, 950, 975, 1000)

# short name in files -> long name (CDS request name == ARCO/WB2 variable name)
PRESSURE_VARS = {
    "z": "geopotential",
    "t": "temperature",
    "u": "u_component_of_wind",
    "v": "v_component_of_wind",
    "q": "specific_humidity",
}
SINGLE_VARS = {
    "t2m": "2m_temperature",
    "u10": "10m_u_component_of_wind",
    "v10": "10m_v_component_of_wind",
}
# Static fields live in one time-invariant file. The raw file holds lsm and the
# surface geopotential z; the orography channel is z / G in metres.
STATIC_VARS = {"lsm": "land_sea_mask", "z": "geopotential"}
STATIC_CHANNELS = {"lsm": "lsm", "orography": "z"}
ARCO_STATIC_NAMES = {"lsm": "land_sea_mask", "z": "geopotential_at_surface"}

# physical units of each raw variable as assembled (orography is z / G in metres)
UNITS = {"z": "m2 s-2", "t": "K", "u": "m s-1", "v": "m s-1", "q": "kg kg-1", "t2m": "K",
         "u10": "m s-1", "v10": "m s-1", "lsm": "1"}

GROUP_VARS = {"pressure": PRESSURE_VARS, "single": SINGLE_VARS, "static": STATIC_VARS}
CDS_DATASETS = {
    "pressure": "reanalysis-era5-pressure-levels",
    "single": "reanalysis-era5-single-levels",
    "static": "reanalysis-era5-single-levels",
}

PAPER_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 775, 850, 900, 925, 1000)
PRESETS = {
    # 5 variables x 15 levels + 3 surface + 2 static = 80 channels
    "paper": [f"{v}_{lev}" for v in PRESSURE_VARS for lev in PAPER_LEVELS]
    + list(SINGLE_VARS) + list(STATIC_CHANNELS),
    # the embedded default: 14 channels, the forecast targets included
    "tiny": ["z_500", "z_850", "t_500", "t_850", "u_500", "u_850", "v_500", "v_850", "q_850",
             "t2m", "u10", "v10", "lsm", "orography"],
}


@dataclass(frozen=True)
class Channel:
    """One input channel: its name, the file group and raw variable it is read from."""

    name: str
    group: str  # pressure | single | static
    var: str  # short name in the raw file
    level: int | None = None


def channel_units(ch: "Channel") -> str:
    """Physical units of an assembled channel."""
    return "m" if ch.name == "orography" else UNITS[ch.var]


def parse_channel(name: str) -> Channel:
    """Resolve a channel name (z_500, t2m, orography...) or raise ConfigError."""
    if name in SINGLE_VARS:
        return Channel(name, "single", name)
    if name in STATIC_CHANNELS:
        return Channel(name, "static", STATIC_CHANNELS[name])
    var, _, level = name.partition("_")
    if var in PRESSURE_VARS and level.isdigit():
        if int(level) not in ERA5_LEVELS:
            raise ConfigError(None, f"channel {name!r}: {level} hPa is not an ERA5 pressure "
                                    f"level (levels: {', '.join(map(str, ERA5_LEVELS))})")
        return Channel(name, "pressure", var, int(level))
    known = ", ".join([f"{v}_<level>" for v in PRESSURE_VARS] + list(SINGLE_VARS)
                      + list(STATIC_CHANNELS))
    raise ConfigError(None, f"unknown channel {name!r} (known: {known})")


def resolve_channels(spec: str | list[str]) -> list[Channel]:
    """Turn a preset name or a list of names into Channel objects, in order."""
    names = PRESETS[spec] if isinstance(spec, str) else list(spec)
    if len(set(names)) != len(names):
        raise ConfigError(None, "channel list has duplicates")
    return [parse_channel(n) for n in names]


def required_fields(channels: list[Channel]) -> dict[str, dict]:
    """Per file group: the raw variables and pressure levels the channels need."""
    need: dict[str, dict] = {}
    for ch in channels:
        entry = need.setdefault(ch.group, {"vars": [], "levels": []})
        if ch.var not in entry["vars"]:
            entry["vars"].append(ch.var)
        if ch.level is not None and ch.level not in entry["levels"]:
            entry["levels"].append(ch.level)
    for entry in need.values():
        entry["levels"].sort()
    return need
