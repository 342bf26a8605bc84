"""Tile the preprocessed images: per-band statistics on the training images' plant pixels only,
then every image cut into fixed-size normalised tiles, one Zarr per split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import zarr

from ..io import InputError, atomic_path, read_json, write_json

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def assign_splits(names: list[str], fractions: dict, seed: int) -> dict[str, str]:
    """Image name -> split, by a seeded shuffle; val and test get at least one image each when possible."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n = len(names)
    n_test = max(1, round(fractions["test"] * n)) if n >= 3 else 0
    n_val = max(1, round(fractions["val"] * n)) if n >= 3 else 0
    out = {}
    for rank, i in enumerate(order):
        out[names[i]] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return out


def _tile_origins(shape: tuple[int, int], size: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    (th, tw), (sy, sx) = size, stride
    return [(y, x) for y in range(0, shape[0] - th + 1, sy) for x in range(0, shape[1] - tw + 1, sx)]


def _check_splits(splits: dict[str, str], picks: dict[str, dict], hs: dict, needed: dict[str, str]) -> list[str]:
    """Refuse an empty split that a later stage needs (`needed`: split -> who); warn about the others."""
    empty = []
    for split in SPLITS:
        n_images = sum(1 for s in splits.values() if s == split)
        if sum(len(v) for v in picks[split].values()):
            continue
        empty.append(split)
        what = (f"none of the {len(splits)} image(s) is assigned to it" if not n_images else
                f"its {n_images} image(s) give no tile with at least "
                f"{hs['tiles']['min_plant_fraction']:.0%} plant pixels (hyperspectral.tiles.min_plant_fraction)")
        if split in needed:
            hint = ("give at least 3 images (val and test get one each from 3 on)" if not n_images
                    else "lower hyperspectral.tiles.min_plant_fraction")
            raise InputError(None, f"hyperspectral: the {split} split is empty: {what}; {needed[split]} "
                                   f"needs it ({hint})")
        log.warning("hyperspectral: the %s split is empty: %s", split, what)
    return empty


def make_tiles(images: dict[str, Path], hs: dict, out_dir: str | Path, needed: dict[str, str] | None = None) -> dict:
    """Band stats from training plant pixels, then normalised tiles per split; returns the stats.

    needed: split -> the later stage that reads it; such a split may not be empty (the
    others get a warning and an empty store).
    """
    out_dir = Path(out_dir)
    splits = assign_splits(list(images), hs["splits"], hs["splits"]["seed"])
    if not any(s == "train" for s in splits.values()):
        raise InputError(None, "hyperspectral: no image left for the training split (the band statistics need one)")
    groups = {name: zarr.open_group(str(path), mode="r") for name, path in images.items()}
    wl = None
    for name, g in groups.items():
        w = g["wavelength"][:]
        if wl is None:
            wl = w
        elif w.shape != wl.shape or not np.allclose(w, wl, atol=0.01):
            raise InputError(images[name], "wavelengths differ from the other images: set "
                                           "hyperspectral.bands.grid_nm to resample to a common grid")
    masks_by_image = {name: g["mask"][:].astype(bool) for name, g in groups.items()}
    size = tuple(hs["tiles"]["size"])
    min_plant = hs["tiles"]["min_plant_fraction"]
    strides = {split: size for split in SPLITS}
    strides["train"] = tuple(hs["tiles"].get("train_stride") or size)  # overlap only where nothing is scored
    picks_by_split = {split: {name: [(y, x) for (y, x) in _tile_origins(masks_by_image[name].shape, size,
                                                                         strides[split])
                                     if masks_by_image[name][y:y + size[0], x:x + size[1]].mean() >= min_plant]
                              for name in sorted(n for n, s in splits.items() if s == split)}
                      for split in SPLITS}
    empty = _check_splits(splits, picks_by_split, hs, needed or {})
    total = np.zeros(wl.size)
    total_sq = np.zeros(wl.size)
    count = 0
    for name, g in groups.items():
        if splits[name] != "train":
            continue
        refl, mask = g["reflectance"], masks_by_image[name]
        for s in range(0, refl.shape[0], hs["block_lines"]):
            blk = refl[s:s + hs["block_lines"]][mask[s:s + hs["block_lines"]]].astype(np.float64)
            total += blk.sum(0)
            total_sq += (blk**2).sum(0)
            count += blk.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    mask_background = hs["tiles"]["mask_background"]
    trait_names = _common_traits(groups)
    counts = {}
    for split in SPLITS:
        picks = picks_by_split[split]
        names = list(picks)
        counts[split] = n_tiles = sum(len(v) for v in picks.values())
        with atomic_path(out_dir / f"{split}.zarr") as tmp:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            tiles = root.create_array("tiles", shape=(n_tiles, wl.size, *size),
                                      chunks=(1, wl.size, *size), dtype="float32",
                                      dimension_names=["tile", "band", "y", "x"])
            # masks and traits are one chunk per split: filled here, written once below (a write per
            # tile would rewrite the whole chunk every time)
            masks = np.zeros((n_tiles, *size), np.uint8)
            trait_tiles = np.zeros((n_tiles, len(trait_names), *size), np.float32) if trait_names else None
            i, order = 0, []
            for name in names:
                mask = masks_by_image[name]
                traits = groups[name]["traits"][:] if trait_names else None  # (y, x, trait), read once
                rows_read = None, None
                for (y, x) in picks[name]:
                    if rows_read[0] != y:  # one read per row of tiles, not per tile
                        rows_read = y, groups[name]["reflectance"][y:y + size[0]]
                    keep = mask[y:y + size[0], x:x + size[1]]
                    norm = (rows_read[1][:, x:x + size[1]] - mean) / std
                    if mask_background:  # statistics are of plant pixels: background would be far outliers
                        norm[~keep] = 0.0
                    tiles[i] = norm.transpose(2, 0, 1).astype(np.float32)
                    masks[i] = keep
                    if trait_tiles is not None:
                        trait_tiles[i] = traits[y:y + size[0], x:x + size[1]].transpose(2, 0, 1)
                    order.append((name, y, x))
                    i += 1
            root.create_array("mask", data=masks, chunks=(max(1, n_tiles), *size), dimension_names=["tile", "y", "x"])
            if trait_tiles is not None:
                root.create_array("traits", data=trait_tiles, chunks=(max(1, n_tiles), len(trait_names), *size),
                                  dimension_names=["tile", "trait", "y", "x"])
            root.create_array("wavelength", data=wl, dimension_names=["band"])
            root.attrs.update({"images": [p[0] for p in order], "origins": [[p[1], p[2]] for p in order],
                               "split": split, "traits": trait_names})
    stats = {"wavelengths": wl.tolist(), "mean": mean.tolist(), "std": std.tolist(),
             "plant_pixels": int(count), "splits": splits, "tiles": counts, "empty_splits": empty,
             "tile_size": list(size), "train_stride": list(strides["train"]),
             "background_masked": bool(mask_background), "traits": trait_names}
    write_json(out_dir / "stats.json", stats)
    return stats


def _common_traits(groups: dict) -> list[str]:
    """The leaf traits every image carries (the tiles' `traits`), or none with a log line why."""
    names = {name: list(g.attrs.get("traits", [])) for name, g in groups.items()}
    first = next(iter(names.values()), [])
    if first and all(n == first for n in names.values()):
        return first
    if any(names.values()):
        log.info("hyperspectral: not every image has the same leaf-trait raster (%s); tiles without traits",
                 {k: v for k, v in names.items()})
    else:
        log.info("hyperspectral: the images carry no leaf-trait raster; tiles without traits (no trait probe)")
    return []


def read_summaries(paths: list[str | Path]) -> dict[str, dict]:
    """Per-image JSON summaries by image name."""
    return {read_json(p)["image"]: read_json(p) for p in paths}
