"""Spectral tiles for the masked autoencoder: the hyperspectral stage's tiles or seeded synthetic ones.

Sampling is a pure function of (seed, step, micro-step): resuming at step N draws the
same batches as an uninterrupted run, with no sampler state to checkpoint. Every rank
draws the same global batch and keeps its data-parallel shard, so TP peers see the same
samples and data-parallel ranks disjoint ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import InputError
from . import Batch, step_generator


@dataclass(frozen=True)
class Augment:
    """Random changes to training tiles, drawn per tile: a flip or rotation (the 8 symmetries of a
    square tile, the 4 flips of another), and a spectral shift of its plant pixels.

    The shift adds one random spectrum to every plant pixel of the tile: `shift` times a draw
    from the training plant pixels' band covariance (normalised units). A small training set
    holds few leaves, whose spectra a model can memorise instead of reading them from the
    visible patches; shifted leaves cannot be memorised, only copied.
    """

    flips: bool = False
    shift: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict | None) -> "Augment":
        """From the mae.augment config section ({} or None: no augmentation)."""
        cfg = cfg or {}
        return cls(bool(cfg.get("flips", False)), float(cfg.get("shift", 0.0)))

    def __bool__(self) -> bool:
        return self.flips or self.shift > 0

    def draw(self, n: int, bands: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tile symmetry ids (n,) and standard normal shift coefficients (n, bands)."""
        return torch.randint(0, 8, (n,), generator=g), torch.randn(n, bands, generator=g)

    def apply(self, x: torch.Tensor, plant: torch.Tensor | None, sym: int, z: torch.Tensor,
              covariance_root: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One tile (bands, H, W) and its plant pixels (H, W) after symmetry `sym` and the shift
        shift * covariance_root @ z on its plant pixels."""
        if self.shift > 0:
            if covariance_root is None or plant is None:
                raise ValueError("a spectral shift needs the plant masks and band covariance of the tiles")
            x = torch.where(plant[None], x + (self.shift * covariance_root @ z)[:, None, None], x)
        if self.flips:
            x, plant = _symmetry(x, sym), (_symmetry(plant, sym) if plant is not None else None)
        return x, plant


def plant_covariance_root(tile, plant, n_tiles: int) -> torch.Tensor:
    """A square root L (bands, bands), L @ L.T = band covariance of the plant pixels of tiles 0..n-1."""
    pixels = torch.cat([tile(i)[:, plant(i)].T.double() for i in range(n_tiles)])
    if len(pixels) < 2:
        raise ValueError("a spectral shift needs plant pixels in the training tiles")
    cov = torch.cov(pixels.T)
    values, vectors = torch.linalg.eigh(cov)
    return (vectors * values.clamp_min(0).sqrt()).float()


def _symmetry(a: torch.Tensor, sym: int) -> torch.Tensor:
    """Symmetry `sym` (0-7) on the last two axes: of a square, sym // 2 quarter turns then a
    horizontal flip when odd; of a non-square, flips only (bit 0 horizontal, bit 1 vertical)."""
    if a.shape[-1] == a.shape[-2]:
        a = torch.rot90(a, sym // 2, dims=(-2, -1))
        return a.flip(-1) if sym % 2 else a
    flips = [dim for dim, bit in ((-1, 1), (-2, 2)) if sym & bit]
    return a.flip(flips) if flips else a


def mae_batch(tile, n_tiles: int, image: tuple[int, int], seed: int, step: int, micro: int,
              global_batch: int, rows: slice, mask_ratio: float, patch: int, plant=None,
              weights: torch.Tensor | None = None, augment: Augment | None = None,
              covariance_root: torch.Tensor | None = None) -> Batch:
    """This rank's rows of a global MAE micro-batch: tiles tile(i) for drawn ids (uniformly, or
    in proportion to `weights`), with the shared patch mask, given `plant` the plant pixels, and
    given `augment` each tile changed as drawn (the same draws on every rank)."""
    from ..model.arch import random_mask

    g = step_generator(seed, step, micro)
    if weights is None:
        ids = torch.randint(0, n_tiles, (global_batch,), generator=g)
    else:
        ids = torch.multinomial(weights, global_batch, replacement=True, generator=g)
    num_patches = (image[0] // patch) * (image[1] // patch)
    mask = random_mask(global_batch, num_patches, mask_ratio, g)
    mine = [int(i) for i in ids[rows]]
    xs = [tile(i) for i in mine]
    ps = [plant(i) for i in mine] if plant is not None else [None] * len(mine)
    if augment:
        sym, z = (v[rows] for v in augment.draw(global_batch, xs[0].shape[0], g))
        pairs = [augment.apply(x, p, int(s), zi, covariance_root) for x, p, s, zi in zip(xs, ps, sym, z)]
        xs, ps = [p[0] for p in pairs], [p[1] for p in pairs]
    plants = torch.stack(ps) if plant is not None else None
    return Batch(torch.stack(xs), mask=mask[rows], plant=plants)


SPLIT_SALT = {"val": 11, "test": 13}


def tile_mask(seed: int, split: str, index: int, num_patches: int, ratio: float) -> torch.Tensor:
    """The evaluation mask of one held-out tile: (num_patches,) bool, identical for every variant
    (training's held-out curve and the evaluation stage use the same)."""
    from ..model.arch import random_mask

    return random_mask(1, num_patches, ratio, step_generator(seed, index, 0, SPLIT_SALT[split]))[0]


def tile_masks(seed: int, split: str, indices, num_patches: int, ratio: float) -> torch.Tensor:
    """The evaluation masks of several held-out tiles, (len(indices), num_patches) bool."""
    return torch.stack([tile_mask(seed, split, i, num_patches, ratio) for i in indices])


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
        self._covariance_root = None

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
              mask_ratio: float, patch: int, sampling: str = "uniform", augment: Augment | None = None) -> Batch:
        """This rank's rows of the global micro-batch, with the (shared) MAE mask and the plant pixels."""
        root = self.covariance_root() if augment and augment.shift > 0 else None
        return mae_batch(self.tile, self.tiles.shape[0], self.image, seed, step, micro, global_batch,
                         rows, mask_ratio, patch, self.plant_mask if self.masks is not None else None,
                         sampling_weights(self.plant_fraction, sampling), augment, root)

    def covariance_root(self) -> torch.Tensor:
        """The band covariance root of this store's plant pixels (computed once; see Augment)."""
        if self._covariance_root is None:
            self._covariance_root = plant_covariance_root(self.tile, self.plant_mask, len(self))
        return self._covariance_root


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
        self._covariance_root = None
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
              mask_ratio: float, patch: int, sampling: str = "uniform", augment: Augment | None = None) -> Batch:
        """This rank's rows of the global micro-batch, with the (shared) MAE mask and the plant pixels."""
        root = self.covariance_root() if augment and augment.shift > 0 else None
        return mae_batch(self.tile, 2**31 - 1, self.image, seed, step, micro, global_batch,
                         rows, mask_ratio, patch, self.plant_mask, augment=augment, covariance_root=root)

    def covariance_root(self) -> torch.Tensor:
        """The band covariance root of the plant pixels of tiles 0-63 (computed once; see Augment)."""
        if self._covariance_root is None:
            self._covariance_root = plant_covariance_root(self.tile, self.plant_mask, 64)
        return self._covariance_root
