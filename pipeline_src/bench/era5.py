"""ERA5 benchmark: regrid throughput (fields/s) per importable backend, and stage wall times.

    dchag bench era5 [--config config.yaml] [--workdir DIR]

Prints one table per part; every ratio is measured in this run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from .. import config as config_mod
from ..era5.grids import cds_grid
from ..era5.regrid import available_backends, regrid_dataset


def _smooth_fields(deg: float, n_time: int) -> xr.Dataset:
    lat, lon = cds_grid(deg)
    lat = lat[::-1]
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    base = (np.sin(2 * phi) * np.cos(lam) + np.cos(phi) ** 2 * np.sin(3 * lam)).astype(np.float32)
    data = np.stack([base * (1 + 0.01 * k) for k in range(n_time)])
    return xr.Dataset({"f": (("time", "latitude", "longitude"), data)},
                      coords={"time": np.arange(n_time), "latitude": lat, "longitude": lon})


def bench_regrid(grids=(2.5, 1.0, 0.25), repeats: int = 3) -> list[dict]:
    """Fields per second for each importable backend and source grid (bilinear and conservative)."""
    rows = []
    for deg in grids:
        n_time = max(4, int(2_000_000 / (180 / deg * 360 / deg)))  # ~8 MB of float32 per grid
        ds = _smooth_fields(deg, n_time).chunk({"time": 16})
        for backend in available_backends():
            for method in ("bilinear", "conservative"):
                with tempfile.TemporaryDirectory() as wdir:
                    regrid_dataset(ds.isel(time=slice(0, 2)), backend, method, deg, Path(wdir))[0].load()
                    best = float("inf")
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        regrid_dataset(ds, backend, method, deg, Path(wdir))[0].load()
                        best = min(best, time.perf_counter() - t0)
                rows.append({"grid": deg, "backend": backend, "method": method, "fields": n_time,
                             "fields_per_s": n_time / best})
    return rows


def bench_workflow(config_path: Path, workdir: Path) -> float:
    """Wall seconds of plain `snakemake` (ERA5 stages, default profile) in a fresh folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, workdir / "config.yaml")
    repo = config_mod.REPO_ROOT
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir),
           "--cores", str(min(2, os.cpu_count() or 1)), "era5_all"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(args) -> None:
    """Run both parts and print tables."""
    rows = bench_regrid()
    print("Regrid throughput to 32x64 (bilinear/conservative), best of 3, "
          f"{os.cpu_count()} CPU(s)")
    print(f"{'source grid':>12} {'backend':>14} {'method':>13} {'fields':>7} {'fields/s':>10}")
    for r in rows:
        print(f"{r['grid']:>10g}deg {r['backend']:>14} {r['method']:>13} {r['fields']:>7} {r['fields_per_s']:>10.1f}")
    backends = sorted({r["backend"] for r in rows})
    if len(backends) == 2:
        for deg in sorted({r["grid"] for r in rows}):
            f = {(r["backend"], r["method"]): r["fields_per_s"] for r in rows if r["grid"] == deg}
            ratio = f[("xesmf", "bilinear")] / f[("xarray-regrid", "bilinear")]
            print(f"  {deg:g} deg: xesmf / xarray-regrid bilinear throughput = {ratio:.2f}")
    cfg = config_mod.load(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp) / "wf"
        seconds = bench_workflow(Path(args.config), workdir)
        n_jobs = 2 * (2 * len(cfg.all_years) + 1) + 1
    print(f"\nERA5 stages on {args.config} ({cfg.era5['source']}, {len(cfg.channels)} channels, "
          f"{len(cfg.all_years)} years, {cfg.era5['grid_deg']:g} deg source): "
          f"{seconds:.1f} s wall for {n_jobs} jobs via snakemake")
