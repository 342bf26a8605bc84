"""Evaluation figures: RMSE maps, example forecasts, metric-vs-lead panels, MAE previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _map(ax, field, lat, lon, **kw):
    extent = (lon[0], lon[-1], lat[0], lat[-1])
    im = ax.imshow(field, origin="lower", extent=extent, aspect="auto", **kw)
    ax.set_xticks([]), ax.set_yticks([])
    return im


def error_maps(rmse, path: str | Path, title: str) -> None:
    """RMSE per grid cell: one row per variable, one column per lead, shared colour scale per row."""
    plt = _plt()
    variables, leads = list(rmse["variable"].values), list(rmse["lead_hours"].values)
    lat, lon = rmse["latitude"].values, rmse["longitude"].values
    fig, axes = plt.subplots(len(variables), len(leads), figsize=(2.6 * len(leads) + 0.8, 1.5 * len(variables) + 0.6),
                             squeeze=False)
    for vi, var in enumerate(variables):
        vmax = float(rmse.sel(variable=var).max())
        for li, lead in enumerate(leads):
            im = _map(axes[vi, li], rmse.sel(variable=var, lead_hours=lead).values, lat, lon,
                      cmap="magma", vmin=0, vmax=vmax)
            if vi == 0:
                axes[vi, li].set_title(f"{lead / 24:g} days", fontsize=9)
        axes[vi, 0].set_ylabel(var, fontsize=9)
        fig.colorbar(im, ax=axes[vi, :].tolist(), shrink=0.9, pad=0.01)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def example(fields: dict, variables: list[str], units: list[str], lead_index: int, lead_hours: int,
            lat, lon, path: str | Path, title: str) -> None:
    """Forecast, truth and error of one initialisation at one lead: a row per variable."""
    plt = _plt()
    fig, axes = plt.subplots(len(variables), 3, figsize=(9, 1.6 * len(variables) + 0.6), squeeze=False)
    for vi, var in enumerate(variables):
        fc, truth = fields["forecast"][lead_index, vi], fields["truth"][lead_index, vi]
        lo, hi = float(min(fc.min(), truth.min())), float(max(fc.max(), truth.max()))
        _map(axes[vi, 0], fc, lat, lon, cmap="viridis", vmin=lo, vmax=hi)
        im = _map(axes[vi, 1], truth, lat, lon, cmap="viridis", vmin=lo, vmax=hi)
        fig.colorbar(im, ax=axes[vi, :2].tolist(), shrink=0.9, pad=0.01)
        err = fc - truth
        lim = float(np.abs(err).max()) or 1.0
        im = _map(axes[vi, 2], err, lat, lon, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=axes[vi, 2], shrink=0.9, pad=0.02)
        axes[vi, 0].set_ylabel(f"{var}\n[{units[vi]}]", fontsize=8)
    for ax, name in zip(axes[0], ("forecast", "truth", "forecast - truth")):
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"{title}: init {fields['init_time'][:16]}, lead {lead_hours / 24:g} days", fontsize=10)
    _save(fig, path)


STYLE = {"climatology": dict(color="0.4", ls="--"), "persistence": dict(color="0.6", ls=":"),
         "damped_persistence": dict(color="0.2", ls="-.")}


def metric_vs_lead(rows: list[dict], metric: str, path: str | Path, title: str) -> None:
    """One panel per variable: `metric` against lead time for every system in `rows`."""
    plt = _plt()
    rows = [r for r in rows if r["metric"] == metric]
    variables = list(dict.fromkeys(r["variable"] for r in rows))
    systems = list(dict.fromkeys(r["variant"] for r in rows))
    cols = min(3, len(variables))
    nrows = -(-len(variables) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, var in zip(axes.ravel(), variables):
        for system in systems:
            pts = sorted((r["lead_hours"] / 24, r["value"]) for r in rows if r["variable"] == var and r["variant"] == system)
            ax.plot(*zip(*pts), marker="o", label=system, **STYLE.get(system, {}))
        unit = next(r["units"] for r in rows if r["variable"] == var)
        ax.set(title=var, xlabel="lead (days)", ylabel=f"{metric} [{unit}]" if metric.startswith(("rmse", "bias")) else metric)
    for ax in axes.ravel()[len(variables):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def loss_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str, ylabel: str) -> None:
    """Several (step, value) curves on one log-scale plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 3.5))
    for name, pts in curves.items():
        if pts:  # references grey (zero dashed, visible mean dotted, local mean dash-dot), target red, models solid
            style = {}
            if name.startswith("predict"):
                style = dict(color="0.5", ls="--" if "zero" in name else "-." if "local" in name else ":")
            elif name.startswith("target"):
                style = dict(color="C3", ls="--", lw=1)
            ax.plot(*zip(*pts), label=name, **style)
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes, off the curves
    fig.tight_layout()
    _save(fig, path)


def mae_preview(rgb_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path, title: str) -> None:
    """False-colour input, masked input and reconstruction, one row per tile (RGB in [0, 1])."""
    plt = _plt()
    fig, axes = plt.subplots(len(rgb_rows), 3, figsize=(7, 2.3 * len(rgb_rows)), squeeze=False)
    for row, images in zip(axes, rgb_rows):
        for ax, img, name in zip(row, images, ("input", "masked input", "reconstruction")):
            ax.imshow(np.clip(img, 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def mean_spectra(wavelengths, true: np.ndarray, recon: np.ndarray, path: str | Path, title: str) -> None:
    """Mean plant reflectance spectrum of the masked patches: truth vs reconstruction."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(wavelengths, true, label="true", color="k")
    ax.plot(wavelengths, recon, label="reconstructed", color="tab:green", ls="--")
    ax.set(xlabel="wavelength (nm)", ylabel="reflectance", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
