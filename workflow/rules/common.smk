# Paths, config views, helpers shared by the rule files, the effective config file that every
# CLI call reads, and the MLflow parent run. Rule files hold rules only.
import os
import re
import sys
from pathlib import Path

import yaml

from pipeline_src import config as pipeline_config
from pipeline_src import tracking

# Full validation (schema + semantic checks such as overlapping split years) with a
# message naming the bad key; the schema defaults are filled in here.
try:
    CFG = pipeline_config.Config(pipeline_config.validate_dict(config, "config"))
except pipeline_config.ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}")

RESULTS = "results"
RESOURCES = "resources"
LOGS = "logs"
EFFECTIVE_CONFIG = f"{RESULTS}/config.effective.yaml"

# Stage folders (downstream rules name upstream files through these, not retyped paths).
ERA5 = CFG.era5
ERA5_SOURCE = ERA5["source"]
ASSEMBLED = f"{RESULTS}/era5/assembled"
HS = CFG.hyperspectral
HS_IMAGES = CFG.hyperspectral_images()
HS_RAW = f"{RESOURCES}/hyperspectral/synthetic"
HS_OUT = f"{RESULTS}/hyperspectral"
HS_TILES = f"{HS_OUT}/tiles"
TRAIN = CFG.data["train"]
TRAIN_VARIANTS = {v["name"]: v for v in TRAIN["variants"]}
TRAIN_DIR = f"{RESULTS}/train"
EVAL = CFG.data["evaluate"]
EVAL_DIR = f"{RESULTS}/evaluation"
EVAL_NPROC = EVAL["nproc"] or TRAIN["nproc"]
BASELINES = ("climatology", "persistence")
FORECASTERS = [n for n, v in TRAIN_VARIANTS.items() if v["task"] == "forecast"]

ERA5_PIECES = [(g, str(y)) for g in ("pressure", "single") if g in CFG.required for y in CFG.all_years]
if "static" in CFG.required:
    ERA5_PIECES.append(("static", "static"))


def _write_effective_config():
    """Write the validated config once per change, atomically, for the CLI calls of the rules."""
    text = yaml.safe_dump(CFG.data, sort_keys=True)
    path = Path(EFFECTIVE_CONFIG)
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


_write_effective_config()

# In a conda deployment the job's env provides python; otherwise use this interpreter
# (the .venv), so jobs work whether or not the venv is activated.
from snakemake.settings.types import DeploymentMethod

if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    PYTHON = "python"
else:
    PYTHON = sys.executable
CLI = f"{PYTHON} -m pipeline_src.cli"


def hs_cubes(wildcards):
    """raw, white, dark data files of one image: generated (synthetic) or from config (files)."""
    if HS["source"] == "files":
        entry = next(f for f in HS["files"] if f["name"] == wildcards.image)
        return {"raw": entry["raw"], "white": entry["white"], "dark": entry["dark"]}
    return {"raw": f"{HS_RAW}/{wildcards.image}.raw",
            "white": f"{HS_RAW}/{wildcards.image}_white.raw",
            "dark": f"{HS_RAW}/{wildcards.image}_dark.raw"}


def train_inputs(wildcards):
    """Forecast variants read the assembled ERA5 splits; MAE variants the hyperspectral tiles."""
    if TRAIN_VARIANTS[wildcards.variant]["task"] == "forecast":
        return [f"{ASSEMBLED}/manifest.json"]
    if CFG.data["mae"]["source"] == "hyperspectral":
        return [f"{HS_TILES}/stats.json"]
    return []


def train_config_hash(wildcards):
    """Rerun trigger of one variant: the shared sections plus the variant's own entry."""
    variant = str(sorted(TRAIN_VARIANTS[wildcards.variant].items()))
    return f"{CFG.section_hash('model', 'train', 'forecast', 'mae')}-{variant}"


def rank_launcher(nproc):
    """srun (from resources.mpi) under Slurm profiles, else torchrun with `nproc` ranks."""

    def launch(wildcards, resources):
        mpi = resources.get("mpi", "")
        choice = TRAIN["launcher"]
        if choice == "srun" or (choice == "auto" and mpi):
            return f"{mpi or 'srun'} --kill-on-bad-exit=1 {PYTHON} -m pipeline_src.cli"
        return f"{PYTHON} -m torch.distributed.run --standalone --nproc-per-node {nproc} -m pipeline_src.cli"

    return launch


def evaluate_inputs(wildcards):
    """The variant's final checkpoint and the data it is verified on."""
    return {"checkpoint": f"{TRAIN_DIR}/{wildcards.variant}/final", "data": train_inputs(wildcards)}


def system_outputs(system):
    """The files every evaluated system (variant or baseline) gets under results/evaluation/."""
    return {
        "metrics": f"{EVAL_DIR}/{system}/metrics.csv",
        "summary": f"{EVAL_DIR}/{system}/summary.json",
        "data": directory(f"{EVAL_DIR}/{system}/data"),
        "plots": report(directory(f"{EVAL_DIR}/{system}/plots"), patterns=["{name}.png"],
                        caption="../report/evaluate.rst", category="Evaluation", subcategory=system),
    }


def parent_folder(name):
    """A params function: the folder holding the named output (derived, not retyped)."""
    return lambda wildcards, output: str(Path(output[name]).parent)


onstart:
    tracking.start_workflow_run(
        CFG.mlflow,
        CFG.data["run_name"],
        params=CFG.data,
        tags={"workdir": os.getcwd()},
    )


onsuccess:
    tracking.end_workflow_run(CFG.mlflow, ok=True)


onerror:
    tracking.end_workflow_run(CFG.mlflow, ok=False)
