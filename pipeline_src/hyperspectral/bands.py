"""Band handling: trim noisy edges, bin neighbours, resample to a common wavelength grid."""

from __future__ import annotations

import numpy as np


def trim(wavelengths: np.ndarray, lo_nm: float, hi_nm: float) -> slice:
    """The band slice whose wavelengths lie in [lo_nm, hi_nm]."""
    keep = np.flatnonzero((wavelengths >= lo_nm) & (wavelengths <= hi_nm))
    if keep.size == 0:
        raise ValueError(f"no band between {lo_nm} and {hi_nm} nm")
    return slice(int(keep[0]), int(keep[-1]) + 1)


def bin_bands(cube: np.ndarray, wavelengths: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average groups of `factor` adjacent bands (a remainder at the end is dropped)."""
    if factor <= 1:
        return cube, wavelengths
    n = (cube.shape[-1] // factor) * factor
    binned = cube[..., :n].reshape(*cube.shape[:-1], n // factor, factor).mean(-1)
    return binned.astype(np.float32), wavelengths[:n].reshape(-1, factor).mean(-1)


def resample(cube: np.ndarray, wavelengths: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation of every pixel's spectrum onto `target` (inside the measured range)."""
    if target[0] < wavelengths[0] - 1e-6 or target[-1] > wavelengths[-1] + 1e-6:
        raise ValueError(f"target grid {target[0]:g}-{target[-1]:g} nm leaves the measured range "
                         f"{wavelengths[0]:g}-{wavelengths[-1]:g} nm")
    idx = np.clip(np.searchsorted(wavelengths, target) - 1, 0, len(wavelengths) - 2)
    w = ((target - wavelengths[idx]) / (wavelengths[idx + 1] - wavelengths[idx])).astype(np.float32)
    return (cube[..., idx] * (1 - w) + cube[..., idx + 1] * w).astype(np.float32)
