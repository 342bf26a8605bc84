"""Config + variant name + paths -> the TrainJob every rank runs."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from .loop import TrainJob, TrainSettings

SETTING_KEYS = ("steps", "micro_batch", "grad_accum", "lr", "min_lr_ratio", "warmup_steps",
                "weight_decay", "grad_clip", "precision", "checkpoint_every", "keep_checkpoints",
                "log_every", "seed")


def job_from_config(cfg: Config, variant: str, out_dir: str | Path, assembled: str | Path | None,
                    rule: str | None = None) -> TrainJob:
    """The TrainJob for one configured variant, writing under out_dir."""
    v = cfg.variant(variant)
    t = cfg.data["train"]
    settings = TrainSettings(**{k: t[k] for k in SETTING_KEYS}, tp=t["mesh"]["tp"],
                             fsdp=t["mesh"]["fsdp"], dp=t["mesh"]["dp"])
    if v["task"] == "forecast":
        if assembled is None:
            raise ValueError("a forecast variant needs the assembled ERA5 directory")
        assembled = Path(assembled)
        data = {"store": str(assembled / "train.zarr"),
                "normalization": str(assembled / "normalization.json"),
                "targets": list(cfg.data["forecast"]["targets"]),
                "lead_days": list(cfg.data["forecast"]["lead_days"])}
    else:
        m = cfg.data["mae"]
        data = {"source": m["source"], "bands": m["bands"], "image": list(m["image"]),
                "mask_ratio": m["mask_ratio"], "seed": m["seed"]}
    out = Path(out_dir)
    return TrainJob(name=variant, task=v["task"], model=v["model"], settings=settings, run_dir=out,
                    final_dir=out / "final", summary_path=out / "summary.json", data=data,
                    mlflow=cfg.mlflow, rule=rule, plot_path=out / "loss.png")
