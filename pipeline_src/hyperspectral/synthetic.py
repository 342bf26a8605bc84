"""Seeded synthetic plant scenes in the camera's raw counts, with their true reflectance.

Leaves are elliptical blobs whose spectra come from PROSPECT-D (the `prosail` package).
One plant draws its chlorophyll, water and dry matter once; each leaf departs from them by
a log-normal factor (`LEAF_SPREAD`), so the leaves of a plant look alike rather than like
draws from every plant there is. Each leaf is shaded: its reflectance is scaled by a
brightness that varies smoothly over the leaf (a level, a tilt along one of its axes, a
curl across the other; `SHADING`). In proximal images of plants, leaf angle and
illumination are a large part of the pixel-to-pixel variation, and they scale a pixel's
spectrum rather than change its shape. Without shading the near-infrared plateau varies
by 1-2% over a plant and, once normalised, holds mostly camera noise.

A pot ring and soil fill the background. Raw counts follow the line-scan camera model the
calibration inverts: counts = dark + reflectance x (white - dark) + noise, where
(white - dark) holds the illumination falling off across the columns and the sensor's
weaker response (hence noisier signal) at the spectral edges. White and dark reference
cubes are written alongside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .writers import write_camera, write_envi, write_hdf5

# Log-normal standard deviations of a leaf's chlorophyll, water and dry matter about its plant's.
LEAF_SPREAD = (0.15, 0.10, 0.10)
# Leaf brightness = level x (1 + tilt x v) x (1 - curl x u**2), with u and v the leaf's own
# axes (-1..1 from edge to edge): uniform ranges of level, tilt and curl.
SHADING = {"level": (0.75, 1.0), "tilt": (-0.25, 0.25), "curl": (0.0, 0.2)}
# The leaf traits a scene records per pixel (PROSPECT's names), in this order
TRAITS = ("cab", "cw", "cm")


@dataclass
class Scene:
    """A synthetic scene: raw counts, references, truth."""

    raw: np.ndarray          # (lines, samples, bands) float64 counts before quantisation
    white: np.ndarray        # (ref_lines, samples, bands)
    dark: np.ndarray         # (ref_lines, samples, bands)
    reflectance: np.ndarray  # (lines, samples, bands) true reflectance
    leaves: np.ndarray       # (lines, samples) bool
    leaf_ids: np.ndarray     # (lines, samples) int: 0 background, k the k-th leaf drawn
    wavelengths: np.ndarray
    traits: np.ndarray       # (lines, samples, 3) float32: each leaf pixel's PROSPECT chlorophyll
                             # (ug cm-2), water and dry matter (g cm-2); NaN off the leaves


def wavelength_grid(bands: int = 500, lo: float = 400.0, hi: float = 900.0) -> np.ndarray:
    """Band centres of the camera, nm."""
    return np.linspace(lo, hi, bands)


def leaf_spectrum(wavelengths: np.ndarray, cab: float, cw: float, cm: float, n: float = 1.5) -> np.ndarray:
    """PROSPECT-D leaf reflectance at the given wavelengths."""
    import prosail

    wl, refl, _ = prosail.run_prospect(n, cab, 8.0, 0.0, cw, cm, ant=1.0, prospect_version="D")
    return np.interp(wavelengths, wl, refl)


def soil_spectrum(wavelengths: np.ndarray, brightness: float) -> np.ndarray:
    """A dry potting-soil spectrum rising gently towards the near infrared."""
    x = (wavelengths - 400.0) / 500.0
    return brightness * (0.06 + 0.14 * x + 0.05 * x**2)


def make_scene(seed: int, lines: int = 64, samples: int = 96, bands: int = 500,
               n_leaves: tuple[int, int] = (3, 7), ref_lines: int = 16, white_level: float = 3000.0,
               dark_level: float = 200.0, noise: float = 4.0) -> Scene:
    """One seeded scene (see module doc)."""
    rng = np.random.default_rng(seed)
    wl = wavelength_grid(bands)
    yy, xx = np.mgrid[0:lines, 0:samples].astype(np.float64)
    cy, cx = lines / 2, samples / 2
    r = np.hypot((yy - cy) / lines, (xx - cx) / samples)
    refl = np.empty((lines, samples, bands))
    refl[:] = soil_spectrum(wl, rng.uniform(0.8, 1.3))
    pot = (r > 0.40) & (r < 0.46)
    refl[pot] = 0.12 + 0.02 * (wl - 400.0) / 500.0  # grey plastic pot rim
    leaves = np.zeros((lines, samples), dtype=bool)
    leaf_ids = np.zeros((lines, samples), dtype=np.int16)  # later leaves lie on top
    traits = np.full((lines, samples, len(TRAITS)), np.nan, dtype=np.float32)
    plant = {"cab": rng.uniform(25, 55), "cw": rng.uniform(0.008, 0.018), "cm": rng.uniform(0.004, 0.008)}
    for leaf in range(1, rng.integers(n_leaves[0], n_leaves[1] + 1) + 1):
        ly, lx = rng.uniform(0.25, 0.75) * lines, rng.uniform(0.25, 0.75) * samples
        a, b = rng.uniform(0.08, 0.16) * lines, rng.uniform(0.05, 0.1) * samples
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - ly, xx - lx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / b
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / a
        blob = u**2 + v**2 <= 1.0
        factor = dict(zip(plant, np.exp(rng.normal(0.0, LEAF_SPREAD))))
        leaf_traits = {k: plant[k] * factor[k] for k in plant}
        spec = leaf_spectrum(wl, **leaf_traits)
        level, tilt, curl = (rng.uniform(*SHADING[k]) for k in ("level", "tilt", "curl"))
        brightness = level * (1.0 + tilt * v[blob]) * (1.0 - curl * u[blob] ** 2)
        refl[blob] = brightness[:, None] * spec[None, :]
        leaves |= blob
        leaf_ids[blob] = leaf
        traits[blob] = [leaf_traits[k] for k in TRAITS]
    # Camera: response weaker at the spectral edges; illumination falls off across columns.
    response = 0.35 + 0.65 * np.exp(-(((wl - 650.0) / 260.0) ** 4))
    illumination = 1.0 - 0.3 * ((np.arange(samples) - samples / 2) / samples) ** 2 * 4
    span = white_level * illumination[:, None] * response[None, :]  # (samples, bands)
    dark_pattern = dark_level + rng.normal(0, 5.0, size=(samples, bands))
    band_noise = noise / response  # noisier where the response is weak

    def measure(signal_lines: np.ndarray) -> np.ndarray:
        n = rng.normal(0.0, 1.0, size=signal_lines.shape) * band_noise
        return signal_lines + n

    raw = measure(dark_pattern[None] + refl * span[None])
    white = measure(np.broadcast_to(dark_pattern + span, (ref_lines, samples, bands)).copy())
    dark = measure(np.broadcast_to(dark_pattern, (ref_lines, samples, bands)).copy())
    return Scene(raw, white, dark, refl.astype(np.float32), leaves, leaf_ids, wl, traits)


def configured_scene(synthetic: dict, index: int) -> Scene:
    """The scene the pipeline writes for its `index`-th image, from the hyperspectral.synthetic config."""
    return make_scene(synthetic["seed"] * 100003 + index, lines=synthetic["lines"],
                      samples=synthetic["samples"], bands=synthetic["bands"])


def quantise(counts: np.ndarray, dtype: str) -> np.ndarray:
    """Counts as stored by the camera: rounded and clipped for integer types."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return np.clip(np.rint(counts), info.min, info.max).astype(dt)
    return counts.astype(dt)


def write_scene(scene: Scene, folder: str | Path, name: str, fmt: str = "envi",
                interleave: str = "bil", dtype: str = "<u2") -> dict[str, Path]:
    """Write raw, white and dark cubes of a scene (ENVI: and its leaf-trait raster); returns the data paths by role."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    if fmt == "envi":  # the field truth beside the cubes: a float32 ENVI raster, one band per trait
        out["traits"] = write_envi(folder / f"{name}_traits.hdr", scene.traits, None, "bsq", "<f4",
                                   description="leaf traits (PROSPECT-D): chlorophyll, water, dry matter",
                                   band_names=TRAITS)
    for role, cube in (("raw", scene.raw), ("white", scene.white), ("dark", scene.dark)):
        q = quantise(cube, dtype)
        stem = name if role == "raw" else f"{name}_{role}"
        if fmt == "envi":
            out[role] = write_envi(folder / f"{stem}.hdr", q, scene.wavelengths, interleave, dtype)
        elif fmt == "camera":
            out[role] = write_camera(folder / f"{stem}.{interleave}", q, scene.wavelengths, dtype)
        elif fmt == "hdf5":
            out[role] = write_hdf5(folder / f"{stem}.h5", q, scene.wavelengths, interleave, dtype)
        else:
            raise ValueError(f"unknown cube format {fmt!r}")
    return out
