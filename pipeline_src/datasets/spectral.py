"""Spectral tiles for the masked autoencoder: the hyperspectral stage's tiles or seeded synthetic ones.

Sampling is a pure function of (seed, step, micro-step): resuming at step N draws the
same batches as an uninterrupted run, with no sampler state to checkpoint. Every rank
draws the same global batch and keeps its data-parallel shard, so TP peers see the same
samples and data-parallel ranks disjoint ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import InputError
from . import Batch, step_generator


def mae_batch(tile, n_tiles: int, image: tuple[int, int], seed: int, step: int, micro: int,
              global_batch: int, rows: slice, mask_ratio: float, patch: int, plant=None,
              weights: torch.Tensor | None = None) -> Batch:
    """This rank's rows of a global MAE micro-batch: tiles tile(i) for drawn ids (uniformly, or
    in proportion to `weights`), with the shared patch mask and, given `plant`, the plant pixels."""
    from ..model.arch import random_mask

    g = step_generator(seed, step, micro)
    if weights is None:
        ids = torch.randint(0, n_tiles, (global_batch,), generator=g)
    else:
        ids = torch.multinomial(weights, global_batch, replacement=True, generator=g)
    num_patches = (image[0] // patch) * (image[1] // patch)
    mask = random_mask(global_batch, num_patches, mask_ratio, g)
    mine = [int(i) for i in ids[rows]]
    x = torch.stack([tile(i) for i in mine])
    plants = torch.stack([plant(i) for i in mine]) if plant is not None else None
    return Batch(x, mask=mask[rows], plant=plants)


SPLIT_SALT = {"val": 11, "test": 13}


def tile_mask(seed: int, split: str, index: int, num_patches: int, ratio: float) -> torch.Tensor:
    """The evaluation mask of one held-out tile: (num_patches,) bool, identical for every variant
    (training's held-out curve and the evaluation stage use the same)."""
    from ..model.arch import random_mask

    return random_mask(1, num_patches, ratio, step_generator(seed, index, 0, SPLIT_SALT[split]))[0]


def sampling_weights(plant_fraction: torch.Tensor, how: str) -> torch.Tensor | None:
    """Tile drawing weights: None (uniform), or in proportion to each tile's plant fraction ('plant')."""
    if how == "uniform":
        return None
    if how != "plant":
        raise ValueError(f"unknown tile sampling {how!r}")
    if float(plant_fraction.sum()) <= 0:
        raise ValueError("no tile holds plant pixels: plant-weighted sampling has nothing to draw")
    return plant_fraction.double()


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
        self.masks = group["mask"] if "mask" in group else None
        fractions = (np.asarray(self.masks[:], dtype=np.float64).mean(axis=(1, 2)) if self.masks is not None
                     else np.ones(len(self)))
        self.plant_fraction = torch.from_numpy(fractions)

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    def tile(self, index: int) -> torch.Tensor:
        """Tile number `index`, (bands, H, W)."""
        return torch.from_numpy(np.asarray(self.tiles[index], dtype=np.float32))

    def plant_mask(self, index: int) -> torch.Tensor:
        """Plant pixels of tile `index`, (H, W) bool."""
        if self.masks is None:
            raise InputError(self.store, "holds no plant masks (written by an older hs_tiles): rerun it")
        return torch.from_numpy(np.asarray(self.masks[index]).astype(bool))

    def batch(self, seed: int, step: int, micro: int, global_batch: int, rows: slice,
              mask_ratio: float, patch: int, sampling: str = "uniform") -> Batch:
        """This rank's rows of the global micro-batch, with the (shared) MAE mask and the plant pixels."""
        return mae_batch(self.tile, self.tiles.shape[0], self.image, seed, step, micro, global_batch,
                         rows, mask_ratio, patch, self.plant_mask if self.masks is not None else None,
                         sampling_weights(self.plant_fraction, sampling))


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

    def _abundances(self, index: int) -> tuple[torch.Tensor, torch.Generator]:
        g = step_generator(self.seed, index, 0, salt=7)
        h, w = self.image
        logits = torch.randn(1, 4, max(2, h // 16), max(2, w // 16), generator=g) * 2.0
        logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return torch.softmax(logits[0], dim=0), g  # (4, H, W)

    def tile(self, index: int) -> torch.Tensor:
        """The normalised tile number `index`, (bands, H, W)."""
        weights, g = self._abundances(index)
        cube = torch.einsum("khw,kb->bhw", weights, self.spectra)
        cube = cube + 0.005 * torch.randn(cube.shape, generator=g)
        return (cube - self.mean) / self.std

    def plant_mask(self, index: int) -> torch.Tensor:
        """Pixels of tile `index` that are mostly leaf, (H, W) bool."""
        weights, _ = self._abundances(index)
        return weights[:2].sum(0) > 0.5

    def batch(self, seed: int, step: int, micro: int, global_batch: int, rows: slice,
              mask_ratio: float, patch: int, sampling: str = "uniform") -> Batch:
        """This rank's rows of the global micro-batch, with the (shared) MAE mask and the plant pixels."""
        return mae_batch(self.tile, 2**31 - 1, self.image, seed, step, micro, global_batch,
                         rows, mask_ratio, patch, self.plant_mask)
