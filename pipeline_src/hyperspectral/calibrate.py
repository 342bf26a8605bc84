"""Raw counts -> reflectance with white and dark references."""

from __future__ import annotations

import numpy as np

from ..io import InputError
from .readers import Cube


def reference_spectrum(ref: Cube, block: int = 256) -> np.ndarray:
    """Mean over lines of a reference cube, per column and band: (samples, bands) float64."""
    total = np.zeros((ref.samples, ref.bands))
    for start in range(0, ref.lines, block):
        total += ref.read_lines(start, min(ref.lines, start + block)).sum(axis=0, dtype=np.float64)
    return total / ref.lines


def check_white(white: Cube, saturation_fraction: float = 0.01) -> None:
    """InputError if more than `saturation_fraction` of the white reference sits at the sensor
    maximum (2**NBITS - 1 for a 12-bit sensor in 16-bit words)."""
    if white.dtype.kind not in "ui":
        return
    top = white.max_value
    hits = total = 0
    for start in range(0, white.lines, 256):
        block = white.read_lines(start, min(white.lines, start + 256))
        hits += int((block >= top).sum())
        total += block.size
    if hits > saturation_fraction * total:
        raise InputError(white.path, f"white reference is saturated: {100 * hits / total:.1f}% of "
                                     f"values at the sensor maximum {top:g}")


def reflectance(raw: np.ndarray, white: np.ndarray, dark: np.ndarray,
                clip: tuple[float, float] = (0.0, 1.5)) -> np.ndarray:
    """(raw - dark) / (white - dark), per column and band, clipped to `clip`; float32."""
    span = white - dark
    if np.any(span <= 0):
        bad = np.argwhere(span <= 0)[0]
        raise ValueError(f"white reference not above dark at column {bad[0]}, band {bad[1]}")
    out = (raw - dark[None]) / span[None]
    return np.clip(out, clip[0], clip[1]).astype(np.float32)
