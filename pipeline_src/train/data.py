"""Training data: ERA5 forecast pairs from the assembled Zarr, spectral tiles for the MAE.

Sampling is a pure function of (seed, step, micro-step): resuming at step N draws the
same batches as an uninterrupted run, with no sampler state to checkpoint. Every rank
draws the same global batch and keeps its data-parallel shard, so TP peers see the same
samples and data-parallel ranks disjoint ones.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ..io import InputError


def step_generator(seed: int, step: int, micro: int, salt: int = 0) -> torch.Generator:
    """A torch Generator determined by (seed, step, micro-step, salt)."""
    mixed = np.random.SeedSequence([seed, step, micro, salt]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(mixed[0] % (2**63)))


@dataclass
class Batch:
    """One micro-batch for this rank: inputs, targets, and the task's extra input (lead or mask)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    lead_days: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class ERA5Forecast:
    """(fields at t, lead) -> fields of the target channels at t + lead, normalised per channel."""

    def __init__(self, store: str | Path, normalization: str | Path, targets: list[str],
                 lead_days: list[float]):
        self.store = Path(store)
        if not (self.store / "zarr.json").is_file() and not (self.store / ".zgroup").is_file():
            raise InputError(self.store, "assembled ERA5 Zarr store not found (run the era5 stages)")
        try:
            with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp in directory outputs
                warnings.filterwarnings("ignore", message=".*not recognized as a component")
                self.ds = xr.open_zarr(self.store, consolidated=False)
            self.fields = self.ds["fields"]
        except (KeyError, ValueError, OSError) as err:
            raise InputError(self.store, f"not an assembled ERA5 store: {err}") from None
        self.channels = [str(c) for c in self.ds["channel"].values]
        stats = json.loads(Path(normalization).read_text())
        if stats["channels"] != self.channels:
            raise InputError(normalization, "normalisation channels differ from the store's channels")
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(stats["std"], dtype=torch.float32)[:, None, None]
        missing = [t for t in targets if t not in self.channels]
        if missing:
            raise InputError(self.store, f"target channels {missing} are not in the store")
        self.targets = [self.channels.index(t) for t in targets]
        times = self.ds["time"].values
        if len(times) < 2:
            raise InputError(self.store, "needs at least two time steps")
        deltas = np.diff(times).astype("timedelta64[s]").astype(np.int64)
        if not (deltas == deltas[0]).all():
            raise InputError(self.store, "time steps are not evenly spaced")
        steps_per_day = 86400 / deltas[0]
        self.lead_days = [float(d) for d in lead_days]
        self.lead_steps = []
        for d in self.lead_days:
            s = d * steps_per_day
            if abs(s - round(s)) > 1e-9 or round(s) < 1:
                raise InputError(self.store, f"lead time {d} days is not a whole number of "
                                             f"{deltas[0] / 3600:g}-hour steps")
            if round(s) >= len(times):
                raise InputError(self.store, f"lead time {d} days is longer than the split")
            self.lead_steps.append(int(round(s)))
        self.latitudes = self.ds["latitude"].values
        self.image = (self.fields.sizes["latitude"], self.fields.sizes["longitude"])

    def _read(self, t: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.fields[t].values, dtype=np.float32))

    def batch(self, seed: int, step: int, micro: int, global_batch: int, rows: slice) -> Batch:
        """This rank's rows of the global micro-batch for (step, micro)."""
        g = step_generator(seed, step, micro)
        lead_idx = torch.randint(len(self.lead_steps), (global_batch,), generator=g)
        u = torch.rand(global_batch, generator=g, dtype=torch.float64)
        xs, ys, leads = [], [], []
        n = len(self.ds["time"])
        for k in range(global_batch)[rows]:
            li = int(lead_idx[k])
            t = int(u[k] * (n - self.lead_steps[li]))
            xs.append((self._read(t) - self.mean) / self.std)
            y = (self._read(t + self.lead_steps[li]) - self.mean) / self.std
            ys.append(y[self.targets])
            leads.append(self.lead_days[li])
        return Batch(torch.stack(xs), torch.stack(ys), lead_days=torch.tensor(leads))

    def close(self) -> None:
        """Release the store."""
        self.ds.close()


def mae_batch(tile, n_tiles: int, image: tuple[int, int], seed: int, step: int, micro: int,
              global_batch: int, rows: slice, mask_ratio: float, patch: int) -> Batch:
    """This rank's rows of a global MAE micro-batch: tiles tile(i) for drawn ids, with the shared mask."""
    from ..model.arch import random_mask

    g = step_generator(seed, step, micro)
    ids = torch.randint(0, n_tiles, (global_batch,), generator=g)
    num_patches = (image[0] // patch) * (image[1] // patch)
    mask = random_mask(global_batch, num_patches, mask_ratio, g)
    x = torch.stack([tile(int(i)) for i in ids[rows]])
    return Batch(x, mask=mask[rows])


class SpectralTiles:
    """Normalised hyperspectral tiles (band, y, x) from the hyperspectral stage's split Zarr."""

    def __init__(self, store: str | Path):
        import zarr

        self.store = Path(store)
        try:
            group = zarr.open_group(str(self.store), mode="r")
            self.tiles = group["tiles"]
            self.wavelengths = group["wavelength"][:]
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise InputError(self.store, f"not a hyperspectral tile store ({err}); run hs_tiles") from None
        if self.tiles.shape[0] == 0:
            raise InputError(self.store, "holds no tiles")
        self.bands = int(self.tiles.shape[1])
        self.image = (int(self.tiles.shape[2]), int(self.tiles.shape[3]))

    def tile(self, index: int) -> torch.Tensor:
        """Tile number `index`, (bands, H, W)."""
        return torch.from_numpy(np.asarray(self.tiles[index], dtype=np.float32))

    def batch(self, seed: int, step: int, micro: int, global_batch: int, rows: slice,
              mask_ratio: float, patch: int) -> Batch:
        """This rank's rows of the global micro-batch, with the (shared) MAE mask."""
        return mae_batch(self.tile, self.tiles.shape[0], self.image, seed, step, micro, global_batch,
                         rows, mask_ratio, patch)


class SyntheticSpectralTiles:
    """Seeded hyperspectral tiles (bands, H, W): smooth abundance maps of plant, soil and pot spectra.

    A stand-in for the hyperspectral stage's tiles: vegetation spectra with a red edge near
    700 nm, rising soil spectra and a flat pot, mixed by smooth random abundances, plus noise.
    Values are normalised per band with statistics of the generator's own spectra.
    """

    def __init__(self, bands: int, image: tuple[int, int], seed: int = 0):
        self.bands, self.image, self.seed = bands, tuple(image), seed
        wl = torch.linspace(400.0, 900.0, bands, dtype=torch.float64)
        edge = torch.sigmoid((wl - 705.0) / 12.0)
        green = 0.06 * torch.exp(-((wl - 550.0) / 35.0) ** 2)
        leaf = 0.04 + green + 0.45 * edge
        leaf_dry = 0.08 + 0.5 * green + 0.30 * edge
        soil = 0.08 + 0.22 * (wl - 400.0) / 500.0
        pot = torch.full_like(wl, 0.12)
        self.spectra = torch.stack([leaf, leaf_dry, soil, pot]).float()  # (4, bands)
        self.mean = torch.zeros(bands, 1, 1)
        self.std = torch.ones(bands, 1, 1)
        sample = torch.stack([self.tile(2**40 + i) for i in range(16)])  # ids never drawn
        self.mean = sample.mean(dim=(0, 2, 3))[:, None, None]
        self.std = sample.std(dim=(0, 2, 3))[:, None, None]

    def tile(self, index: int) -> torch.Tensor:
        """The normalised tile number `index`, (bands, H, W)."""
        g = step_generator(self.seed, index, 0, salt=7)
        h, w = self.image
        logits = torch.randn(1, 4, max(2, h // 16), max(2, w // 16), generator=g) * 2.0
        logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        weights = torch.softmax(logits[0], dim=0)  # (4, H, W)
        cube = torch.einsum("khw,kb->bhw", weights, self.spectra)
        cube = cube + 0.005 * torch.randn(cube.shape, generator=g)
        return (cube - self.mean) / self.std

    def batch(self, seed: int, step: int, micro: int, global_batch: int, rows: slice,
              mask_ratio: float, patch: int) -> Batch:
        """This rank's rows of the global micro-batch, with the (shared) MAE mask."""
        return mae_batch(self.tile, 2**31 - 1, self.image, seed, step, micro, global_batch,
                         rows, mask_ratio, patch)
