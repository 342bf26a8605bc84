"""What `snakemake --profile frontier` submits for multi-node layouts, without Frontier.

The real Slurm executor plugin runs against stand-in client commands: sinfo reports Frontier's
batch nodes (56 usable cores, 512 GB), sacctmgr the account, and sbatch records the submission
and refuses it. The test reads the sbatch line the plugin built and the srun line of the job.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_src.config import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
ACCOUNT = "abc123"
FAKE = {
    "sinfo": "for i in 1 2 3 4 5 6 7 8; do echo 'batch*|56|512000'; done",
    "sacctmgr": f"echo {ACCOUNT}",
    "sbatch": 'echo "$*" >> "$(dirname "$0")/submitted.txt"; echo "sbatch: error: not a cluster" >&2; exit 1',
    "scontrol": "exit 1", "squeue": "exit 1", "sacct": "exit 1", "sshare": "exit 1",
}


def _frontier(tmp_path: Path, train: dict, target: str, rule: str, evaluate: dict | None = None,
              extra: tuple = ()) -> tuple[str, str]:
    """(sbatch line, srun line) of the job that builds `target` under the Frontier profile; with
    nothing submitted, (None, snakemake's output)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    wd = tmp_path / "wd"
    (wd / "results/era5/assembled").mkdir(parents=True)
    (wd / "results/era5/assembled/manifest.json").write_text("{}")
    (wd / "results/train/fc/final").mkdir(parents=True)
    cfg = {"era5": {"source": "synthetic", "years": {"train": [2010], "val": [2011], "test": [2012]},
                    "channels": "paper", "hours": [0]},
           "model": {"dim": 256, "depth": 2, "heads": 16, "agg_heads": 16, "patch": 4},
           "train": {**train, "variants": [{"name": "fc", "task": "forecast", "arch": "dchag-L"}]},
           "evaluate": evaluate or {}}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, DCHAG_SLURM_ACCOUNT=ACCOUNT,
               PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("SNAKEMAKE_PROFILE", None)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "frontier", "-s", str(REPO_ROOT / "Snakefile"),
                           "-d", str(wd), target, "--allowed-rules", rule, "--retries", "0",
                           "--slurm-init-seconds-before-status-checks", "1", *extra],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)
    out = proc.stdout + proc.stderr
    submitted = (bin_dir / "submitted.txt").read_text().splitlines() if (bin_dir / "submitted.txt").exists() else []
    if not submitted:
        return None, out
    assert len(submitted) == 1, out[-4000:]
    sbatch = re.sub(r" --wrap=.*", "", submitted[0])
    (srun,) = {m.group(1) for m in re.finditer(r"(srun .*?) /\S*python -m pipeline_src\.cli", out)}
    print(f"{rule}: sbatch {sbatch}\n{rule}: {srun}")
    return sbatch, srun


def _options(line: str) -> list[str]:
    return line.split()


def test_tp16_trains_on_two_whole_nodes(tmp_path):
    sbatch, srun = _frontier(tmp_path, {"nproc": 16, "mesh": {"tp": 16}}, "results/train/fc/summary.json", "train")
    opts = _options(sbatch)
    assert {"--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=7", "-C", "nvme", "-A", ACCOUNT} <= set(opts)
    assert "--signal=USR1@300" in sbatch and not any(o.startswith("--ntasks=") for o in opts)
    assert srun == "srun --gpus-per-task=1 --gpu-bind=closest -N 2 -n 16 --ntasks-per-node 8 -c 7 --kill-on-bad-exit=1"


def test_tp2_fsdp4_dp4_trains_on_four_nodes_and_evaluates_on_one(tmp_path):
    train = {"nproc": 32, "mesh": {"tp": 2, "fsdp": 4, "dp": 4}}
    sbatch, srun = _frontier(tmp_path, train, "results/train/fc/summary.json", "train")
    assert {"--nodes=4", "--ntasks-per-node=8", "--cpus-per-task=7"} <= set(_options(sbatch))
    assert srun == "srun --gpus-per-task=1 --gpu-bind=closest -N 4 -n 32 --ntasks-per-node 8 -c 7 --kill-on-bad-exit=1"
    # its evaluation on one node (the checkpoint reshards to the smaller mesh)
    sbatch, srun = _frontier(tmp_path / "eval", train, "results/evaluation/fc/metrics.csv", "evaluate",
                             evaluate={"nproc": 8, "mesh": {"tp": 2}})
    assert {"--nodes=1", "--ntasks=8", "--cpus-per-task=7", "-t", "30"} <= set(_options(sbatch))
    assert srun == "srun --gpus-per-task=1 --gpu-bind=closest -N 1 -n 8 -c 7 --kill-on-bad-exit=1"


def test_nodes_set_by_hand_against_the_layout_are_refused(tmp_path):
    sbatch, out = _frontier(tmp_path, {"nproc": 16, "mesh": {"tp": 16}}, "results/train/fc/summary.json", "train",
                            extra=("--set-resources", "train:nodes=1", "train:mpi=srun"))
    assert sbatch is None
    assert ("resources {'nodes': 1} contradict the layout: 16 ranks with hpc.ranks_per_node 8 take 2 node(s) x 8 "
            "tasks") in out
