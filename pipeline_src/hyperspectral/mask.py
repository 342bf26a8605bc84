"""Plant mask: NDVI-style index (near-infrared vs red), threshold, small components removed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def band_mean(cube: np.ndarray, wavelengths: np.ndarray, lo_nm: float, hi_nm: float) -> np.ndarray:
    """Mean reflectance over the bands in [lo_nm, hi_nm]: (..., bands) -> (...)."""
    sel = (wavelengths >= lo_nm) & (wavelengths <= hi_nm)
    if not sel.any():
        raise ValueError(f"no band between {lo_nm} and {hi_nm} nm")
    return cube[..., sel].mean(-1)


def ndvi(cube: np.ndarray, wavelengths: np.ndarray, red_nm=(640, 680), nir_nm=(780, 850)) -> np.ndarray:
    """(NIR - red) / (NIR + red) per pixel."""
    red = band_mean(cube, wavelengths, *red_nm)
    nir = band_mean(cube, wavelengths, *nir_nm)
    return ((nir - red) / np.maximum(nir + red, 1e-6)).astype(np.float32)


def plant_mask(index: np.ndarray, threshold: float = 0.4, min_pixels: int = 20) -> np.ndarray:
    """Pixels above threshold, without connected components smaller than min_pixels."""
    mask = index > threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
