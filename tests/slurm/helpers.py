"""What the real-Slurm tests share: snakemake under the Slurm profile, a local torchrun reference, sacct."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline_src.config import REPO_ROOT

ENV = {"DCHAG_SLURM_ACCOUNT": "dchagtest", "DCHAG_SLURM_PARTITION": "cpu"}


def snakemake(wd: Path, *args, timeout=600, profile=True):
    """snakemake in wd, under --profile slurm (or locally on 2 cores with profile=False)."""
    env = dict(os.environ, **ENV, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("SNAKEMAKE_PROFILE", None)
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", *args, "-s",
           str(REPO_ROOT / "Snakefile"), "-d", str(wd)]
    if profile:
        cmd += ["--profile", "slurm", "--slurm-init-seconds-before-status-checks", "5"]
    else:
        cmd += ["--cores", "2"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def torchrun(wd: Path, config: Path, out: Path, variant: str) -> dict:
    """Train a variant locally on 2 ranks under torchrun (no Slurm, no MLflow records); its summary."""
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "pipeline_src.cli", "train", "--config", str(config), "--variant", variant, "--output-dir",
                    str(out), "--assembled", str(wd / "results/era5/assembled")], cwd=wd, check=True,
                   capture_output=True, timeout=300,
                   env={**{k: v for k, v in os.environ.items() if k != "DCHAG_MLFLOW_RECORDS"},
                        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    return json.loads((out / "summary.json").read_text())


def steps_per_s(summary: dict, micro_batch: int) -> float:
    """Peak training steps per second of a run, over its logged windows (the rate still climbs after 100 steps)."""
    mesh = summary["mesh"]
    rate = max(h["samples_per_s"] for h in summary["history"] if "samples_per_s" in h)
    return rate / (micro_batch * mesh["dp"] * mesh["fsdp"])


def sacct(jobs: list[str]) -> list[dict]:
    """sacct's rows of these jobs and their steps: job, state, exit, ntasks, nodes (a Slurm node list)."""
    out = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(jobs), "--format=JobID,State,ExitCode,NTasks,NodeList"],
                         capture_output=True, text=True, timeout=60).stdout
    keys = ("job", "state", "exit", "ntasks", "nodes")
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]


def job_ids(snakemake_output: str) -> list[str]:
    """The Slurm job ids a snakemake run submitted, in order."""
    return sorted({line.split("SLURM jobid ")[1].split()[0] for line in snakemake_output.splitlines()
                   if "SLURM jobid" in line}, key=int)
