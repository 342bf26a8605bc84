"""Preprocess one hyperspectral image: calibrate to reflectance, trim and bin bands, mask the plant.

preprocess_image streams the raw cube in blocks of lines, so a cube larger than memory
is fine; it writes a Zarr with the reflectance (y, x, band), the wavelengths and the
plant mask, plus a JSON summary (plant fraction, mean plant/background spectra).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import zarr

from ..io import InputError, atomic_path, write_json
from .bands import bin_bands, resample, trim
from .calibrate import check_white, reference_spectrum, reflectance
from .mask import ndvi, plant_mask
from .readers import HDF5_SUFFIXES, Cube, open_cube, read_traits

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
                     out_zarr: str | Path, out_json: str | Path, datasets: dict | None = None,
                     traits: str | Path | None = None) -> dict:
    """Calibrate, band-process and mask one image; write its Zarr and JSON summary; return the summary.

    datasets: HDF5 dataset names per role ({raw, white, dark}), for files holding several cubes.
    traits: a leaf-trait raster of the same pixels (readers.read_traits), carried into the Zarr
    as `traits` (y, x, trait) for the evaluation's probe.
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
            trait_names = []
            if traits is not None:
                values, trait_names = read_traits(traits, cube.lines, cube.samples)
                root.create_array("traits", data=values, chunks=values.shape, dimension_names=["y", "x", "trait"])
                root.attrs["traits"] = trait_names
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
                   "wavelengths": out_wl.tolist(), "bytes_read": cube.nbytes, "traits": trait_names,
                   "seconds": time.perf_counter() - start_t}
    write_json(out_json, summary)
    return summary
