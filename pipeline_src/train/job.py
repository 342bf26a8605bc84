"""Config + variant name + paths -> the TrainJob every rank runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import Config
from .loop import TrainJob, TrainSettings

SETTING_KEYS = ("steps", "micro_batch", "grad_accum", "lr", "min_lr_ratio", "warmup_steps",
                "weight_decay", "grad_clip", "precision", "checkpoint_every", "keep_checkpoints",
                "log_every", "seed", "activation_checkpointing", "sequence_parallel")


def data_version(*files: Path) -> str:
    """Hash of the small files that describe a dataset's content (manifest, statistics)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(Path(f).read_bytes() if Path(f).is_file() else b"missing")
    return digest.hexdigest()[:12]


def job_from_config(cfg: Config, variant: str, out_dir: str | Path, assembled: str | Path | None,
                    rule: str | None = None, tiles: str | Path | None = None) -> TrainJob:
    """The TrainJob for one configured variant, writing under out_dir."""
    v = cfg.variant(variant)
    t = cfg.data["train"]
    settings = TrainSettings(**{k: v["train"].get(k, t[k]) for k in SETTING_KEYS}, tp=t["mesh"]["tp"],
                             fsdp=t["mesh"]["fsdp"], dp=t["mesh"]["dp"], expected_world=t["nproc"],
                             walltime_margin_s=t["walltime_margin_s"], loader_workers=t["loader_workers"],
                             prefetch=t["prefetch"], checkpoint_async=t["checkpoint_async"],
                             data_cache_mb=t["data_cache_mb"])
    if v["task"] == "forecast":
        if assembled is None:
            raise ValueError("a forecast variant needs the assembled ERA5 directory")
        assembled = Path(assembled)
        data = {"assembled": str(assembled), "space": cfg.data["forecast"]["space"],
                "targets": list(cfg.data["forecast"]["targets"]),
                "lead_days": list(cfg.data["forecast"]["lead_days"]),
                "version": data_version(assembled / "manifest.json", assembled / "normalization.json")}
    else:
        m = cfg.data["mae"]
        data = {"source": m["source"], "bands": m["bands"], "image": list(m["image"]),
                "mask_ratio": m["mask_ratio"], "seed": m["seed"], "loss": m["loss"], "norm_pix": m["norm_pix"],
                "sampling": m["sampling"], "heldout_every": m["heldout_every"],
                "heldout_draws": m["heldout_draws"],
                "augment": dict(m["augment"])}
        if m["source"] == "hyperspectral":
            if tiles is None:
                raise ValueError("an MAE variant on hyperspectral tiles needs the tiles directory")
            data["store"] = str(Path(tiles) / "train.zarr")
            data["heldout_store"] = str(Path(tiles) / "val.zarr")
            data["version"] = data_version(Path(tiles) / "stats.json")
    out = Path(out_dir)
    return TrainJob(name=variant, task=v["task"], model=v["model"], settings=settings, run_dir=out,
                    final_dir=out / "final", summary_path=out / "summary.json", data=data,
                    mlflow=cfg.mlflow, rule=rule, plot_path=out / "loss.png")
