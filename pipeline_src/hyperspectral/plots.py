"""Hyperspectral pictures: false-colour preview with the plant mask, mean spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def false_colour(refl: np.ndarray, wavelengths: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) in [0, 1] from the bands nearest 640, 550 and 470 nm, stretched per image."""
    idx = [int(np.argmin(np.abs(wavelengths - w))) for w in (640, 550, 470)]
    rgb = refl[..., idx].astype(np.float64)
    lo, hi = np.percentile(rgb, 1), np.percentile(rgb, 99)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)


def preview(refl: np.ndarray, wavelengths: np.ndarray, mask: np.ndarray, path: str | Path, title: str) -> None:
    """False-colour image beside the same image with the plant mask outlined."""
    plt = _plt()
    rgb = false_colour(refl, wavelengths)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].imshow(rgb)
    axes[0].set_title("false colour (640/550/470 nm)")
    axes[1].imshow(rgb)
    axes[1].contour(mask.astype(float), levels=[0.5], colors="magenta", linewidths=0.8)
    axes[1].set_title(f"plant mask ({100 * mask.mean():.1f}% plant)")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def spectra(summaries: dict[str, dict], path: str | Path) -> None:
    """Mean plant and background reflectance spectra of every image."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, s in sorted(summaries.items()):
        wl = np.asarray(s["wavelengths"])
        ax.plot(wl, s["mean_plant_spectrum"], color="tab:green", alpha=0.6, lw=1)
        ax.plot(wl, s["mean_background_spectrum"], color="tab:brown", alpha=0.6, lw=1)
    ax.plot([], [], color="tab:green", label="plant (mean per image)")
    ax.plot([], [], color="tab:brown", label="background (mean per image)")
    ax.set(xlabel="wavelength (nm)", ylabel="reflectance", title="Mean spectra")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
