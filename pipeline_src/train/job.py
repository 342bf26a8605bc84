"""Config + variant name + paths -> the TrainJob every rank runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import Config
from .loop import TrainJob
from .settings import ForecastData, MaeData, ModelSettings, train_sections

# train: keys that are not training settings (how the job is launched, the variants themselves)
NOT_SETTINGS = ("launcher", "nproc", "mesh", "variants")


def data_version(*files: Path) -> str:
    """Hash of the small files that describe a dataset's content (manifest, statistics)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(Path(f).read_bytes() if Path(f).is_file() else b"missing")
    return digest.hexdigest()[:12]


def train_settings(cfg: Config, variant: dict) -> dict:
    """The variant's training sections: the config's train: keys, the variant's overrides, the mesh."""
    t = cfg.data["train"]
    flat = {k: v for k, v in t.items() if k not in NOT_SETTINGS}
    flat.update(variant["train"])
    return train_sections(**flat, **t["mesh"], expected_world=t["nproc"])


def job_data(cfg: Config, task: str, assembled, tiles) -> ForecastData | MaeData:
    """The data section of a forecast or MAE job (paths and the content hash included)."""
    if task == "forecast":
        if assembled is None:
            raise ValueError("a forecast variant needs the assembled ERA5 directory")
        f, assembled = cfg.data["forecast"], Path(assembled)
        return ForecastData(assembled=str(assembled), space=f["space"], targets=f["targets"], lead_days=f["lead_days"],
                            version=data_version(assembled / "manifest.json", assembled / "normalization.json"))
    m = cfg.data["mae"]
    stores = {}
    if m["source"] == "hyperspectral":
        if tiles is None:
            raise ValueError("an MAE variant on hyperspectral tiles needs the tiles directory")
        stores = {"store": str(Path(tiles) / "train.zarr"), "heldout_store": str(Path(tiles) / "val.zarr"),
                  "version": data_version(Path(tiles) / "stats.json")}
    return MaeData(**m, **stores)  # every mae: key is a field (a new key without one is a TypeError)


def job_from_config(cfg: Config, variant: str, out_dir: str | Path, assembled: str | Path | None,
                    rule: str | None = None, tiles: str | Path | None = None) -> TrainJob:
    """The TrainJob for one configured variant, writing under out_dir."""
    v = cfg.variant(variant)
    out = Path(out_dir)
    return TrainJob(name=variant, task=v["task"], model=ModelSettings(**v["model"]),
                    data=job_data(cfg, v["task"], assembled, tiles), **train_settings(cfg, v), run_dir=out,
                    final_dir=out / "final", summary_path=out / "summary.json", mlflow=cfg.mlflow, rule=rule,
                    plot_path=out / "loss.png")
