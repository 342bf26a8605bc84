"""The hyperspectral stage's entry points, each one MLflow child run: write a synthetic scene,
preprocess one image (hyperspectral/preprocess.py), tile and normalise the splits (tiles.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..tracking import stage_run

log = logging.getLogger(__name__)


def acquire_scene(cfg, image: str, output_dir: str) -> None:
    """Write one configured synthetic plant scene (raw, white, dark) as ENVI cubes."""
    from .synthetic import configured_scene, write_scene

    syn = cfg.hyperspectral["synthetic"]
    scene = configured_scene(syn, cfg.hyperspectral_images().index(image))
    write_scene(scene, output_dir, image, "envi", syn["interleave"], syn["dtype"])
    log.info("wrote synthetic scene %s (%.1f%% leaf)", image, 100 * scene.leaves.mean())


def preprocess_stage(cfg, image: str, raw: str, white: str, dark: str, output: str, summary_path: str,
                     preview_path: str, rule: str | None, traits: str | None = None) -> dict:
    """Calibrate, band-process and mask one cube; its Zarr, summary and preview, tracked."""
    import zarr

    from .plots import preview
    from .preprocess import preprocess_image

    hs = cfg.hyperspectral
    params = {"image": image, "bands": hs["bands"], "calibrate": hs["calibrate"], "mask": hs["mask"],
              "source": hs["source"]}
    with stage_run(cfg.mlflow, "hs_preprocess", rule, params, wildcards={"image": image}) as run:
        entry = next((f for f in hs["files"] if f["name"] == image), {}) if hs["source"] == "files" else {}
        summary = preprocess_image(raw, white, dark, hs, output, summary_path, entry.get("datasets"), traits)
        run.log_metrics({"plant_fraction": summary["plant_fraction"], "seconds": summary["seconds"],
                         "megabytes_read": summary["bytes_read"] / 1e6,
                         "megabytes_per_s": summary["bytes_read"] / 1e6 / summary["seconds"]})
        run.set_tags({"format": summary["format"], "interleave": summary["interleave"]})
        g = zarr.open_group(output, mode="r")
        preview(g["reflectance"][:], g["wavelength"][:], g["mask"][:].astype(bool), preview_path,
                f"{image}: {summary['format']} {summary['interleave']}, {summary['bands_out']} bands")
        run.log_artifact(preview_path, "previews")
        run.log_artifact(summary_path, "summaries")
    log.info("%s: %.1f%% plant pixels", image, 100 * summary["plant_fraction"])
    return summary


def tile_consumers(cfg) -> dict[str, str]:
    """Split -> the later stage that reads its tiles: MAE variants train on train, are evaluated on val and test."""
    maes = [v["name"] for v in cfg.data["train"]["variants"] if v["task"] == "mae"]
    if not maes or cfg.data["mae"]["source"] != "hyperspectral":
        return {}
    names = ", ".join(maes)
    return {"train": f"training of {names}", "val": f"evaluation of {names}", "test": f"evaluation of {names}"}


def tiles_stage(cfg, inputs: list[str], summaries: list[str], output_dir: str, spectra_path: str,
                rule: str | None) -> dict:
    """Band statistics on training plant pixels, then normalised tiles per split, tracked."""
    from .plots import spectra
    from .tiles import make_tiles, read_summaries

    hs = cfg.hyperspectral
    images = {Path(p).stem: Path(p) for p in inputs}
    params = {"tiles": hs["tiles"], "splits": hs["splits"], "images": sorted(images)}
    with stage_run(cfg.mlflow, "hs_tiles", rule, params) as run:
        stats = make_tiles(images, hs, output_dir, tile_consumers(cfg))
        if stats["empty_splits"]:
            run.set_tags({"empty_splits": ",".join(stats["empty_splits"])})
        by_image = read_summaries(summaries)
        spectra(by_image, spectra_path)
        run.log_metrics({f"tiles_{k}": v for k, v in stats["tiles"].items()})
        run.log_metrics({"plant_pixels_train": stats["plant_pixels"],
                         "mean_plant_fraction": sum(s["plant_fraction"] for s in by_image.values()) / len(by_image)})
        for band, (wl, mean, std) in enumerate(zip(stats["wavelengths"], stats["mean"], stats["std"])):
            # one point per band (MLflow step = band index) so the UI plots the spectra
            run.log_metrics({"band_mean": mean, "band_std": std, "band_wavelength_nm": wl}, step=band)
        run.log_artifact(Path(output_dir) / "stats.json", "data")
        run.log_artifact(spectra_path, "plots")
    log.info("tiles per split: %s", stats["tiles"])
    return stats
