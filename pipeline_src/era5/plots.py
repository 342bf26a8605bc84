"""PNG maps for people: a channel before and after regridding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..io import atomic_path


def _field(ds: xr.Dataset, var: str, level: int | None) -> xr.DataArray:
    da = ds[var]
    if level is not None and "level" in da.dims:
        da = da.sel(level=level)
    if "time" in da.dims:
        da = da.isel(time=0)
    return da


def regrid_preview(raw: xr.Dataset, regridded: xr.Dataset, picks: list[tuple[str, str, int | None]],
                   out: str | Path, title: str) -> Path:
    """Draw each picked (label, var, level) raw vs regridded, first time step, one PNG."""
    import matplotlib  # imported here: 0.25 s of start-up that importing this module alone does not need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(picks))
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.6 * rows), squeeze=False, constrained_layout=True)
    for row, (label, var, level) in enumerate(picks):
        before, after = _field(raw, var, level), _field(regridded, var, level)
        vmin = float(np.nanmin(before.values))
        vmax = float(np.nanmax(before.values))
        for ax, da, name in ((axes[row, 0], before, "source"), (axes[row, 1], after, "5.625 deg")):
            mesh = ax.pcolormesh(da.longitude, da.latitude, da.values, vmin=vmin, vmax=vmax,
                                 shading="nearest", cmap="viridis")
            ax.set_title(f"{label} {name} ({da.sizes['latitude']}x{da.sizes['longitude']})", fontsize=9)
            ax.set_xlabel("longitude")
            ax.set_ylabel("latitude")
        fig.colorbar(mesh, ax=axes[row, :], shrink=0.9, label=raw[var].attrs.get("units", ""))
    fig.suptitle(title, fontsize=10)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out
