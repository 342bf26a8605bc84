"""The ERA5 stage's entry points, each one MLflow child run: acquire one raw file, regrid it
(with its preview map), assemble the regridded files into the training stores."""

from __future__ import annotations

import logging
from pathlib import Path

from ..io import InputError
from ..tracking import stage_run

log = logging.getLogger(__name__)


def acquire_stage(cfg, group: str, period: str, output: str, rule: str | None) -> dict:
    """Acquire one raw ERA5 file (group, period) from the configured source, tracked."""
    from .acquire import acquire

    params = {"era5": {k: v for k, v in cfg.era5.items() if k not in ("regrid", "assemble")},
              "group": group, "period": period}
    with stage_run(cfg.mlflow, "era5_acquire", rule, params, wildcards={"group": group, "period": period}) as run:
        metrics = acquire(cfg, group, period, output)
        run.log_metrics(metrics)
    log.info("acquired %s (%d fields, %.1f s)", output, metrics["fields"], metrics["seconds"])
    return metrics


def regrid_stage(cfg, group: str, period: str, inputs: list[str], output: str, weights_dir: str | None,
                 preview_path: str | None, rule: str | None) -> dict:
    """Regrid one raw file to the 5.625 deg grid and draw the preview map, tracked."""
    from .plots import regrid_preview
    from .regrid import regrid_file

    params = {"regrid": cfg.era5["regrid"], "grid_deg": cfg.era5["grid_deg"], "source": cfg.era5["source"],
              "group": group, "period": period, "input_files": len(inputs)}
    with stage_run(cfg.mlflow, "era5_regrid", rule, params, wildcards={"group": group, "period": period}) as run:
        metrics, before, after = regrid_file(cfg, group, period, inputs, output, weights_dir)
        run.set_tags({"regrid_backend": metrics["backend"]})
        run.log_metrics(metrics)
        if preview_path:
            regrid_preview(before, after, _preview_picks(cfg, group, before), preview_path,
                           f"{group} {period}: {cfg.era5['grid_deg']:g} deg -> 5.625 deg "
                           f"({metrics['backend']}, {cfg.era5['regrid']['method']})")
            run.log_artifact(preview_path, "previews")
        before.close()
    log.info("regridded %d file(s) -> %s with %s (%.1f fields/s)", metrics["files_read"], output,
             metrics["backend"], metrics["fields_per_s"])
    return metrics


def _preview_picks(cfg, group, ds) -> list[tuple[str, str, int | None]]:
    picks = [(c.name, c.var, c.level) for c in cfg.channels
             if c.group == group and c.name in cfg.mlflow["preview_channels"]]
    if not picks:
        first = next(c for c in cfg.channels if c.group == group)
        picks = [(first.name, first.var, first.level)]
    return picks


def regridded_inputs(cfg, paths: list[str]) -> dict[tuple[str, str], Path]:
    """(group, period) -> regridded file; an input of another tool or a missing piece is an InputError."""
    import xarray as xr

    files = {}
    for path in map(Path, paths):
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                key = (ds.attrs["group"], str(ds.attrs["period"]))
        except (OSError, KeyError, ValueError) as err:
            raise InputError(path, f"not a regridded file of this pipeline ({err})") from None
        files[key] = path
    needed = {(g, str(y)) for g in cfg.required if g != "static" for y in cfg.all_years}
    needed |= {("static", "static")} if "static" in cfg.required else set()
    lost = sorted(needed - set(files))
    if lost:
        raise InputError(None, f"assemble: no regridded input for {', '.join('/'.join(k) for k in lost)}")
    return files


def assemble_stage(cfg, inputs: list[str], output_dir: str, rule: str | None) -> dict:
    """Assemble regridded files into split Zarr stores, stats, climatology and manifest, tracked."""
    from .assemble import assemble

    files = regridded_inputs(cfg, inputs)
    params = {"channels": [c.name for c in cfg.channels], "years": cfg.era5["years"],
              "hours": cfg.era5["hours"], "assemble": cfg.era5["assemble"], "source": cfg.era5["source"]}
    out = Path(output_dir)
    with stage_run(cfg.mlflow, "era5_assemble", rule, params) as run:
        metrics = assemble(cfg, files, out)
        run.log_metrics(metrics)
        for name in ("normalization.json", "manifest.json"):
            run.log_artifact(out / name, "data")
    log.info("assembled %d channels into %s (%.1f s)", metrics["n_channels"], out, metrics["seconds"])
    return metrics
