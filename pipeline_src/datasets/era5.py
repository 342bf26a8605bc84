"""Assembled ERA5 as models see it: split stores, the climatology, and the field transform.

A forecaster works in one of two spaces (`forecast.space`):
  anomaly   inputs and targets are departures from the training-years day-of-year x hour
            climatology, divided by the training anomaly std of each channel; time-invariant
            channels (land-sea mask, orography) are normalised as they are. A forecast is
            climatology(valid time) + prediction x anomaly std, so predicting zero is exactly
            the climatology forecast (the subseasonal convention).
  absolute  inputs and targets are fields normalised by the training mean/std (ClimaX).
The transform is stored in every checkpoint, so evaluation undoes exactly what training did.
Sampling is a pure function of (seed, step, micro-step): a resumed run draws the same batches.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..io import InputError, read_json
from . import Batch, step_generator

SPACES = ("anomaly", "absolute")
CLIMATOLOGY_CACHE_BYTES = 512 * 2**20  # a climatology's declared channels up to this are held in memory


def _open_store(path: Path, what: str, wrap=None) -> xr.Dataset:
    """The Zarr store at path, lazily; `wrap(path)` may return a zarr store to read through
    instead (the loader benchmark's and tests' byte counting)."""
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        raise InputError(path, f"{what} not found (run the era5 stages)")
    try:
        with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp in directory outputs
            warnings.filterwarnings("ignore", message=".*not recognized as a component")
            store = path if wrap is None else wrap(path)
            return xr.open_zarr(store, consolidated=False, chunks=None)  # lazy, no dask per read
    except (KeyError, ValueError, OSError) as err:
        raise InputError(path, f"not a readable {what}: {err}") from None


def _as_list(channels: slice | list[int] | None, count: int) -> list[int]:
    """Channel indices of a slice, a list or None (every channel)."""
    if channels is None:
        return list(range(count))
    if isinstance(channels, slice):
        return list(range(count))[channels]
    return [int(c) for c in channels]


def _selector(indices: list[int]) -> slice | list[int]:
    """A slice for a contiguous run of channels (one zarr read per chunk row), else the list."""
    if indices and indices == list(range(indices[0], indices[-1] + 1)):
        return slice(indices[0], indices[-1] + 1)
    return indices


class _DeclaredChannels:
    """The channels a reader of a store declared it will read, and their in-memory copy, loaded at
    the first read when it fits (in the loader's worker, so the training process holds none)."""

    def __init__(self, store: Path, names: list[str], channels: slice | list[int] | None):
        self.store, self.names = store, names
        self.readable = sorted(set(_as_list(channels, len(names))))
        self._position = {c: i for i, c in enumerate(self.readable)}
        self.cache, self._loaded = None, False

    def positions(self, channels: slice | list[int] | None) -> tuple[list[int], list[int]]:
        """(channel indices asked for, their positions in the cache); InputError for an undeclared one."""
        want = _as_list(channels, len(self.names))
        foreign = [self.names[c] for c in want if c not in self._position]
        if foreign:
            raise InputError(self.store, f"channels {foreign[:4]} were not declared by this reader (use_channels)")
        return want, [self._position[c] for c in want]

    def cached(self, load, all_bytes: int, limit: int) -> np.ndarray | None:
        """The declared channels in memory, `load(selector)` once, when their share of all_bytes fits the limit."""
        if not self._loaded:
            self._loaded = True
            if all_bytes // len(self.names) * len(self.readable) <= limit:
                self.cache = load(_selector(self.readable))
        return self.cache


class ERA5Split:
    """One assembled split (train/val/test): fields (time, channel, lat, lon) read by time index.

    The store holds one channel of one time step per chunk, so a reader that declares its
    channels (`use_channels`: a D-CHAG rank's partitions and the forecast targets) reads only
    those from disk, and a read of any other channel is refused. The declared channels of a
    split of at most `cache_bytes` are read into memory once, at the first read (in the
    loader's worker); larger ones are read one time step per request.
    """

    def __init__(self, store: str | Path, cache_bytes: int = 1 << 30, wrap=None):
        self.store = Path(store)
        self.ds = _open_store(self.store, "assembled ERA5 Zarr store", wrap)
        if "fields" not in self.ds:
            raise InputError(self.store, "not an assembled ERA5 store: no variable 'fields'")
        self.fields = self.ds["fields"]
        self.channels = [str(c) for c in self.ds["channel"].values]
        self.times = pd.DatetimeIndex(self.ds["time"].values)
        self.latitudes = np.asarray(self.ds["latitude"].values, dtype=np.float64)
        self.longitudes = np.asarray(self.ds["longitude"].values, dtype=np.float64)
        self.image = (self.fields.sizes["latitude"], self.fields.sizes["longitude"])
        if len(self.times) < 2:
            raise InputError(self.store, "needs at least two time steps")
        deltas = np.diff(self.times.values).astype("timedelta64[s]").astype(np.int64)
        if not (deltas == deltas[0]).all():
            raise InputError(self.store, "time steps are not evenly spaced")
        self.step_seconds = int(deltas[0])
        self.cache_bytes = cache_bytes
        self.use_channels(None)

    def use_channels(self, channels: slice | list[int] | None) -> None:
        """Declare the channels this reader will read (None: all); drops any cache."""
        self.declared = _DeclaredChannels(self.store, self.channels, channels)

    def lead_steps(self, lead_days: float) -> int:
        """Time steps in `lead_days`; InputError if not whole or not shorter than the split."""
        s = lead_days * 86400 / self.step_seconds
        if abs(s - round(s)) > 1e-9 or round(s) < 1:
            raise InputError(self.store, f"lead time {lead_days:g} days is not a whole number of "
                                         f"{self.step_seconds / 3600:g}-hour steps")
        if round(s) >= len(self.times):
            raise InputError(self.store, f"lead time {lead_days:g} days is longer than the split "
                                         f"({self.times[0]} to {self.times[-1]})")
        return int(round(s))

    def read(self, indices, channels: slice | list[int] | None = None) -> np.ndarray:
        """Fields at the given time indices, (n, C, H, W) float32; only `channels` when given.
        InputError for a channel the reader did not declare."""
        want, positions = self.declared.positions(channels)
        cache = self.declared.cached(lambda pick: np.asarray(self.fields.variable[:, pick].values, np.float32),
                                     self.fields.nbytes, self.cache_bytes)
        if cache is not None:
            return cache[np.asarray(indices, dtype=np.int64)][:, positions]
        var = self.fields.variable  # Variable indexing skips DataArray overhead (~2x faster)
        pick = _selector(want)
        return np.stack([np.asarray(var[int(t), pick].values, dtype=np.float32) for t in indices])

    def close(self) -> None:
        """Release the store."""
        self.ds.close()


class Climatology:
    """The assemble stage's day-of-year x hour climatology, looked up for any valid times."""

    def __init__(self, store: str | Path, split: ERA5Split, wrap=None):
        self.store = Path(store)
        ds = _open_store(self.store, "climatology", wrap)
        if "climatology" not in ds:
            raise InputError(self.store, "not a climatology store: no variable 'climatology'")
        self.ds = ds
        self.channels = [str(c) for c in ds["channel"].values]
        if self.channels != split.channels:
            raise InputError(self.store, f"climatology channels {self.channels} differ from {split.store}'s "
                                         f"{split.channels}")
        if not (np.allclose(ds["latitude"].values, split.latitudes)
                and np.allclose(ds["longitude"].values, split.longitudes)):
            raise InputError(self.store, f"climatology grid differs from {split.store}'s")
        self.hours = [int(h) for h in ds["hour"].values]
        self.array = ds["climatology"]
        self.use_channels(None)

    def use_channels(self, channels: slice | list[int] | None) -> None:
        """Declare the channels to be looked up (None: all). Small climatologies (the default's:
        42 MB) are held in memory for those channels, read at the first lookup; large ones per time."""
        self.declared = _DeclaredChannels(self.store, self.channels, channels)

    def at(self, times, channels: slice | list[int] | None = None) -> np.ndarray:
        """Climatology at each valid time (day of year and hour), (n, C, H, W) float32; only `channels` when given."""
        times = pd.DatetimeIndex(times)
        missing = sorted(set(times.hour) - set(self.hours))
        if missing:
            raise InputError(self.store, f"no climatology for hour(s) {missing} (has {self.hours})")
        doy = np.asarray(times.day_of_year) - 1
        hour = np.array([self.hours.index(h) for h in times.hour])
        want, positions = self.declared.positions(channels)
        cache = self.declared.cached(lambda pick: np.asarray(self.array.variable[:, :, pick].values),
                                     self.array.nbytes, CLIMATOLOGY_CACHE_BYTES)
        if cache is not None:
            return cache[doy, hour][:, positions].astype(np.float32)
        var, pick = self.array.variable, _selector(want)
        return np.stack([np.asarray(var[int(d), int(h), pick].values, np.float32) for d, h in zip(doy, hour)])

    def close(self) -> None:
        """Release the store."""
        self.ds.close()


@dataclass(frozen=True)
class FieldTransform:
    """Physical fields <-> model inputs/targets (anomaly or absolute space), per channel."""

    space: str
    channels: tuple[str, ...]
    targets: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    anomaly_std: tuple[float, ...]
    static: tuple[bool, ...]

    @classmethod
    def from_normalization(cls, path: str | Path, space: str, channels: list[str],
                           targets: list[str]) -> "FieldTransform":
        """Read the assemble stage's normalization.json for these channels and targets."""
        if space not in SPACES:
            raise InputError(None, f"forecast.space {space!r}: choose one of {', '.join(SPACES)}")
        stats = read_json(path)
        if stats.get("channels") != list(channels):
            raise InputError(path, f"normalisation channels {stats.get('channels')} differ from the "
                                   f"store's {list(channels)}")
        if space == "anomaly" and "anomaly_std" not in stats:
            raise InputError(path, "no anomaly_std (written by an older assemble stage): rerun "
                                   "`snakemake -R era5_assemble`")
        missing = [t for t in targets if t not in channels]
        if missing:
            raise InputError(path, f"target channels {missing} are not among the channels {list(channels)}")
        static = set(stats.get("static_channels", []))
        anomaly_std = stats.get("anomaly_std", stats["std"])
        return cls(space, tuple(channels), tuple(targets), tuple(stats["mean"]), tuple(stats["std"]),
                   tuple(anomaly_std), tuple(c in static for c in channels))

    def to_dict(self) -> dict:
        """JSON-ready (stored in checkpoint metadata)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FieldTransform":
        """Inverse of to_dict."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def target_index(self) -> list[int]:
        """Channel index of each target."""
        return [self.channels.index(t) for t in self.targets]

    def _scale(self, index=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(offset weight on climatology, additive offset, scale) per channel, shaped (C, 1, 1)."""
        idx = list(range(len(self.channels))) if index is None else index
        use_clim = [self.space == "anomaly" and not self.static[i] for i in idx]
        off = [0.0 if c else self.mean[i] for c, i in zip(use_clim, idx)]
        scale = [self.anomaly_std[i] if c else self.std[i] for c, i in zip(use_clim, idx)]
        shape = (len(idx), 1, 1)
        return (torch.tensor(use_clim, dtype=torch.float32).reshape(shape),
                torch.tensor(off, dtype=torch.float32).reshape(shape),
                torch.tensor(scale, dtype=torch.float32).reshape(shape).clamp_min(1e-12))

    def encode_inputs(self, fields: torch.Tensor, clim: torch.Tensor, channels: slice | None = None) -> torch.Tensor:
        """Physical (..., C, H, W) fields at the initial time -> model inputs (only `channels` when given)."""
        index = None if channels is None else list(range(len(self.channels)))[channels]
        w, off, scale = self._scale(index)
        return (fields - w * clim - off) / scale

    def encode_targets(self, fields: torch.Tensor, clim: torch.Tensor) -> torch.Tensor:
        """Physical (..., C, H, W) fields at the valid time -> targets (..., V, H, W)."""
        idx = self.target_index
        return self.encode_target_fields(fields[..., idx, :, :], clim[..., idx, :, :])

    def encode_target_fields(self, fields: torch.Tensor, clim: torch.Tensor) -> torch.Tensor:
        """Physical (..., V, H, W) target fields (the targets only) at the valid time -> targets."""
        w, off, scale = self._scale(self.target_index)
        return (fields - w * clim - off) / scale

    def decode_targets(self, pred: torch.Tensor, clim: torch.Tensor) -> torch.Tensor:
        """Model output (..., V, H, W) -> physical target fields, given the full (..., C, H, W) climatology."""
        idx = self.target_index
        w, off, scale = self._scale(idx)
        return pred * scale.to(pred) + w.to(pred) * clim[..., idx, :, :].to(pred) + off.to(pred)


class ERA5Forecast:
    """Training pairs: (inputs at t, lead) -> targets at t + lead, in the transform's space."""

    def __init__(self, assembled: str | Path, split: str, targets: list[str], lead_days: list[float],
                 space: str = "anomaly", cache_bytes: int = 1 << 30, wrap=None):
        assembled = Path(assembled)
        self.split = ERA5Split(assembled / f"{split}.zarr", cache_bytes, wrap)
        self.transform = FieldTransform.from_normalization(assembled / "normalization.json", space,
                                                           self.split.channels, targets)
        self.climatology = Climatology(assembled / "climatology.zarr", self.split, wrap)
        self.channels, self.targets = self.split.channels, list(targets)
        self.latitudes, self.image = self.split.latitudes, self.split.image
        self.lead_days = [float(d) for d in lead_days]
        self.lead_steps = [self.split.lead_steps(d) for d in self.lead_days]

    def use_inputs(self, channels: slice | None) -> None:
        """Read only these input channels (a D-CHAG rank's partitions) and the targets, from disk
        and into the in-memory caches; None reads every channel."""
        wanted = None if channels is None else _as_list(channels, len(self.channels)) + list(self.transform.target_index)
        self.split.use_channels(wanted)
        self.climatology.use_channels(wanted)

    def pairs(self, init: list[int], lead_steps: list[int],
              channels: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded inputs (n, C, H, W) and targets (n, V, H, W) for init indices and lead steps.

        channels: read only this slice of the input channels (a D-CHAG rank's partitions);
        the targets are read as whole channels either way, and nothing else is read.
        """
        times = self.split.times
        valid = [i + s for i, s in zip(init, lead_steps)]
        x = torch.from_numpy(self.split.read(init, channels))
        cx = torch.from_numpy(self.climatology.at(times[init], channels))
        targets = self.transform.target_index
        y = torch.from_numpy(self.split.read(valid, targets))
        cy = torch.from_numpy(self.climatology.at(times[valid], targets))
        return self.transform.encode_inputs(x, cx, channels), self.transform.encode_target_fields(y, cy)

    def batch(self, seed: int, step: int, micro: int, global_batch: int, rows: slice,
              channels: slice | None = None) -> Batch:
        """This rank's rows of the global micro-batch for (step, micro); only `channels` of the inputs."""
        g = step_generator(seed, step, micro)
        lead_idx = torch.randint(len(self.lead_steps), (global_batch,), generator=g)
        u = torch.rand(global_batch, generator=g, dtype=torch.float64)
        n = len(self.split.times)
        init, steps, leads = [], [], []
        for k in range(global_batch)[rows]:
            li = int(lead_idx[k])
            init.append(int(u[k] * (n - self.lead_steps[li])))
            steps.append(self.lead_steps[li])
            leads.append(self.lead_days[li])
        x, y = self.pairs(init, steps, channels)
        return Batch(x, y, lead_days=torch.tensor(leads))

    def close(self) -> None:
        """Release the stores."""
        self.split.close()
        self.climatology.close()
