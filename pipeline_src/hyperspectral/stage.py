"""The hyperspectral stage: preprocess one image (calibrate, bands, mask), then tile and normalise.

preprocess_image streams the raw cube in blocks of lines, so a cube larger than memory
is fine; it writes a Zarr with the reflectance (y, x, band), the wavelengths and the
plant mask, plus a JSON summary (plant fraction, mean plant/background spectra).
make_tiles computes per-band statistics on the plant pixels of the training images
only, then cuts every image into fixed-size tiles, normalised, one Zarr per split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import zarr

from ..io import InputError, atomic_path, read_json, write_json
from .bands import bin_bands, resample, trim
from .calibrate import check_white, reference_spectrum, reflectance
from .mask import ndvi, plant_mask
from .readers import HDF5_SUFFIXES, Cube, open_cube

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def _check_pair(cube: Cube, ref: Cube, role: str) -> None:
    where = f"{ref.path}" + (f" [{ref.dataset}]" if ref.dataset else "")
    if ref.samples != cube.samples or ref.bands != cube.bands:
        raise InputError(where, f"{role} reference is {ref.samples} samples x {ref.bands} bands, "
                                f"the image {cube.path.name} is {cube.samples} x {cube.bands}")
    if ref.wavelengths is None:  # a plain frame: the camera wrote no wavelengths with it
        log.info("%s: the %s reference states no wavelengths; taking the image's (%d bands, %.1f-%.1f nm)",
                 where, role, cube.bands, cube.wavelengths[0], cube.wavelengths[-1])
        ref.wavelengths = cube.wavelengths
    elif not np.allclose(ref.wavelengths, cube.wavelengths, atol=0.01):
        raise InputError(where, f"{role} reference wavelengths differ from {cube.path.name}'s")


def _open_reference(path, scene: Cube, role: str, datasets: dict) -> Cube:
    """A white or dark reference: its own file, or a dataset beside the scene in the scene's HDF5
    file, never the scene's own dataset (whether named in the config or found by convention)."""
    shared = Path(path).resolve() == Path(scene.path).resolve()
    if shared and Path(path).suffix.lower() not in HDF5_SUFFIXES:
        raise InputError(path, f"the {role} reference is the scene's own file; give the {role} reference's file")
    ref = open_cube(path, datasets.get(role), role, shared, wavelengths_required=False)
    if shared and ref.dataset == scene.dataset:
        ref.close()
        raw = f"datasets.raw {datasets['raw']!r}" if datasets.get("raw") else "the scene found by default"
        raise InputError(path, f"the {role} reference dataset {ref.dataset!r} is the scene's ({raw}); name the "
                               f"scene's dataset in hyperspectral.files[].datasets.raw")
    return ref


def band_plan(wavelengths: np.ndarray, bands_cfg: dict):
    """(trim slice, bin factor, target grid or None, output wavelengths) for the configured band handling."""
    lo, hi = bands_cfg["trim_nm"]
    keep = trim(wavelengths, lo, hi)
    wl = wavelengths[keep]
    factor = bands_cfg["bin"]
    if factor > 1:
        n = (wl.size // factor) * factor
        wl = wl[:n].reshape(-1, factor).mean(-1)
    grid = bands_cfg.get("grid_nm")
    target = np.linspace(grid[0], grid[1], int(grid[2])) if grid else None
    return keep, factor, target, (target if target is not None else wl)


def apply_band_plan(block: np.ndarray, wavelengths: np.ndarray, keep: slice, factor: int, target) -> np.ndarray:
    """(..., bands) -> (..., output bands): trim, bin and resample as band_plan planned."""
    block, wl = block[..., keep], wavelengths[keep]
    block, wl = bin_bands(block, wl, factor)
    return resample(block, wl, target) if target is not None else block


def preprocess_image(raw: str | Path, white: str | Path, dark: str | Path, hs: dict,
                     out_zarr: str | Path, out_json: str | Path, datasets: dict | None = None) -> dict:
    """Calibrate, band-process and mask one image; write its Zarr and JSON summary; return the summary.

    datasets: HDF5 dataset names per role ({raw, white, dark}), for files holding several cubes.
    """
    start_t = time.perf_counter()
    datasets = datasets or {}
    with (open_cube(raw, datasets.get("raw")) as cube, _open_reference(white, cube, "white", datasets) as w,
          _open_reference(dark, cube, "dark", datasets) as d):
        expected = hs["bands"]["expected"]
        if expected and cube.bands != expected:
            raise InputError(cube.path, f"has {cube.bands} bands; hyperspectral.bands.expected is {expected}")
        _check_pair(cube, w, "white")
        _check_pair(cube, d, "dark")
        check_white(w, hs["calibrate"]["saturation_fraction"])
        white_ref, dark_ref = reference_spectrum(w), reference_spectrum(d)
        if np.any(white_ref <= dark_ref):
            raise InputError(w.path, "white reference is not brighter than the dark reference everywhere")
        keep, factor, target, out_wl = band_plan(cube.wavelengths, hs["bands"])
        clip = tuple(hs["calibrate"]["clip"])
        m = hs["mask"]
        index = np.empty((cube.lines, cube.samples), dtype=np.float32)
        block = hs["block_lines"]
        with atomic_path(out_zarr) as tmp:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            arr = root.create_array("reflectance", shape=(cube.lines, cube.samples, out_wl.size),
                                    chunks=(min(block, cube.lines), cube.samples, out_wl.size),
                                    dtype="float32", dimension_names=["y", "x", "band"])
            for s in range(0, cube.lines, block):
                e = min(cube.lines, s + block)
                refl = reflectance(cube.read_lines(s, e), white_ref, dark_ref, clip)
                if not np.isfinite(refl).all():
                    raise InputError(cube.path, f"non-finite values in lines {s}-{e}")
                out = apply_band_plan(refl, cube.wavelengths, keep, factor, target)
                arr[s:e] = out
                index[s:e] = ndvi(out, out_wl, m["red_nm"], m["nir_nm"])
            mask = plant_mask(index, m["threshold"], m["min_pixels"])
            if not mask.any():
                raise InputError(cube.path, f"no plant pixels (NDVI never above {m['threshold']} in "
                                            f"components of {m['min_pixels']}+ pixels): all background?")
            root.create_array("mask", data=mask.astype(np.uint8), chunks=mask.shape,
                              dimension_names=["y", "x"])
            root.create_array("wavelength", data=out_wl.astype(np.float64), dimension_names=["band"])
            plant_sum = np.zeros(out_wl.size)
            back_sum = np.zeros(out_wl.size)
            for s in range(0, cube.lines, block):
                e = min(cube.lines, s + block)
                blk, mk = arr[s:e], mask[s:e]
                plant_sum += blk[mk].sum(0)
                back_sum += blk[~mk].sum(0)
            root.attrs.update({"source": cube.path.name, "format": cube.fmt, "interleave": cube.interleave})
        n_plant = int(mask.sum())
        n_back = int(mask.size - n_plant)
        summary = {"image": Path(out_zarr).stem, "source": str(cube.path), "format": cube.fmt,
                   "datasets": {r: c.dataset for r, c in (("raw", cube), ("white", w), ("dark", d)) if c.dataset},
                   "bit_depth": cube.bit_depth or (cube.dtype.itemsize * 8 if cube.dtype.kind in "ui" else None),
                   "interleave": cube.interleave, "dtype": str(cube.dtype), "lines": cube.lines,
                   "samples": cube.samples, "bands_in": cube.bands, "bands_out": int(out_wl.size),
                   "wavelength_nm": [float(out_wl[0]), float(out_wl[-1])],
                   "plant_fraction": n_plant / mask.size,
                   "mean_plant_spectrum": (plant_sum / max(n_plant, 1)).tolist(),
                   "mean_background_spectrum": (back_sum / max(n_back, 1)).tolist(),
                   "wavelengths": out_wl.tolist(), "bytes_read": cube.nbytes,
                   "seconds": time.perf_counter() - start_t}
    write_json(out_json, summary)
    return summary


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
            masks = root.create_array("mask", shape=(n_tiles, *size), chunks=(max(1, n_tiles), *size),
                                      dtype="uint8", dimension_names=["tile", "y", "x"])
            i, order = 0, []
            for name in names:
                mask = masks_by_image[name]
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
                    order.append((name, y, x))
                    i += 1
            root.create_array("wavelength", data=wl, dimension_names=["band"])
            root.attrs.update({"images": [p[0] for p in order], "origins": [[p[1], p[2]] for p in order],
                               "split": split})
    stats = {"wavelengths": wl.tolist(), "mean": mean.tolist(), "std": std.tolist(),
             "plant_pixels": int(count), "splits": splits, "tiles": counts, "empty_splits": empty,
             "tile_size": list(size), "train_stride": list(strides["train"]),
             "background_masked": bool(mask_background)}
    write_json(out_dir / "stats.json", stats)
    return stats


def read_summaries(paths: list[str | Path]) -> dict[str, dict]:
    """Per-image JSON summaries by image name."""
    return {read_json(p)["image"]: read_json(p) for p in paths}
