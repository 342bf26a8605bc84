"""What `snakemake --profile frontier` submits, without Frontier.

The real Slurm executor plugin runs against stand-in client commands: sinfo reports Frontier's
batch nodes (56 usable cores, 512 GB, a 24-hour partition limit), sacctmgr the account, and
sbatch records the submission and refuses it. The tests read the sbatch line the plugin built
and the job's command, and run that command with stand-in `module` and `srun` that record the
modules loaded, srun's arguments and the environment the ranks would start in.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline_src.config import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
ACCOUNT = "abc123"
FAKE = {
    "sinfo": "for i in 1 2 3 4 5 6 7 8; do echo 'batch*|56|512000|1-00:00:00'; done",
    "sacctmgr": f"echo {ACCOUNT}",
    "sbatch": 'echo "$*" >> "$(dirname "$0")/submitted.txt"; echo "sbatch: error: not a cluster" >&2; exit 1',
    "scontrol": "exit 1", "squeue": "exit 1", "sacct": "exit 1", "sshare": "exit 1",
}


@dataclass
class Submission:
    """What the Frontier profile submitted for one target (sbatch None when nothing was)."""

    sbatch: str | None
    srun: str | None
    command: str | None  # the job's shell command, as Snakemake printed it
    out: str


def _frontier(tmp_path: Path, train: dict, target: str, rule: str, evaluate: dict | None = None,
              extra: tuple = (), cfg: dict | None = None) -> Submission:
    """The submission of the job that builds `target` under the Frontier profile."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    wd = tmp_path / "wd"
    (wd / "results/era5/assembled").mkdir(parents=True)
    (wd / "results/era5/assembled/manifest.json").write_text("{}")
    (wd / "results/train/fc/final").mkdir(parents=True)
    cfg = cfg or {"era5": {"source": "synthetic", "years": {"train": [2010], "val": [2011], "test": [2012]},
                           "channels": "paper", "hours": [0]},
                  "model": {"dim": 256, "depth": 2, "heads": 16, "agg_heads": 16, "patch": 4},
                  "train": {**train, "variants": [{"name": "fc", "task": "forecast", "arch": "dchag-L"}]},
                  "evaluate": evaluate or {}}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, DCHAG_SLURM_ACCOUNT=ACCOUNT,
               PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("SNAKEMAKE_PROFILE", None)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "frontier", "-s", str(REPO_ROOT / "Snakefile"),
                           "-d", str(wd), target, *(("--allowed-rules", rule) if rule else ()), "--retries", "0",
                           "--slurm-init-seconds-before-status-checks", "1", *extra],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)
    out = proc.stdout + proc.stderr
    submitted = (bin_dir / "submitted.txt").read_text().splitlines() if (bin_dir / "submitted.txt").exists() else []
    commands = [ln.strip().removeprefix("Shell command:").strip() for ln in out.splitlines()
                if "-m pipeline_src.cli" in ln and "--config" in ln]
    if not submitted:
        return Submission(None, None, commands[0] if commands else None, out)
    if rule:
        assert len(submitted) == 1, out[-4000:]
    sbatch = re.sub(r" --wrap=.*", "", submitted[0])
    sruns = {m.group(1) for m in re.finditer(r"(srun .*?) /\S*python -m pipeline_src\.cli", out)}
    print(f"{rule}: sbatch {sbatch}\n{rule}: {commands[0] if commands else None}")
    return Submission(sbatch, sruns.pop() if len(sruns) == 1 else None, commands[0] if commands else None, out)


MODULES = "PrgEnv-gnu/8.7.0 cpe/26.03 rocm/7.2.0 craype-accel-amd-gfx90a miniforge3/23.11.0-0 rccl-net-plugin"
GPU_SRUN = "srun --gpus-per-task=1 --gpu-bind=closest --network=disable_rdzv_get"
TP16 = {"nproc": 16, "mesh": {"tp": 16}}


def _options(line: str) -> list[str]:
    return line.split()


def _run_job(tmp_path: Path, command: str, fail: str = "", module: bool = True) -> tuple[int, str, dict]:
    """Run a job's shell command as the job would, with a stand-in `module` (Lmod's commands: load,
    is-loaded, purge; `fail` names a module whose load fails) and a stand-in srun that records its
    arguments and the environment. Returns (exit status, the job's log, what srun recorded)."""
    stand = tmp_path / "standin"
    stand.mkdir()
    state = stand / "modules.txt"
    if module:
        (stand / "module").write_text(f"""#!/bin/sh
echo "$*" >> {state}.calls
case "$1" in
  load) [ "$2" = "{fail}" ] && {{ echo "Lmod has detected the following error: unknown module $2" >&2; exit 1; }}
        echo "$2" >> {state}; echo "loaded $2" ;;
  is-loaded) grep -qx "$2" {state} ;;
  *) exit 0 ;;
esac
""")
    (stand / "srun").write_text(f"#!/bin/sh\necho \"$*\" > {stand}/srun.args\nenv > {stand}/srun.env\n")
    for f in stand.iterdir():
        f.chmod(0o755)
    wd = tmp_path / "job"
    (wd / "logs/train").mkdir(parents=True)
    (wd / "logs/evaluate").mkdir(parents=True)
    path = os.pathsep.join([str(stand), "/usr/bin", "/bin"])
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=wd, capture_output=True, text=True,
                          env={"PATH": path, "HOME": str(tmp_path), "CRAY_LD_LIBRARY_PATH": "/opt/cray/pe/lib64",
                               "DCHAG_CONFIG": "config.yaml"},
                          timeout=60)
    log = "".join(p.read_text() for p in (wd / "logs").rglob("*.log")) + proc.stderr
    srun = {}
    if (stand / "srun.args").exists():
        srun = {"args": (stand / "srun.args").read_text().strip(),
                "env": dict(ln.split("=", 1) for ln in (stand / "srun.env").read_text().splitlines() if "=" in ln),
                "calls": (Path(f"{state}.calls").read_text().splitlines() if module else [])}
    return proc.returncode, log, srun


def test_tp16_trains_on_two_whole_nodes_over_slingshot(tmp_path):
    """The paper's TP-16 layout: two whole nodes, the RCCL network plugin, the --network flag on the
    allocation and on the job's srun, and OLCF's variables in the environment of every rank."""
    sub = _frontier(tmp_path, TP16, "results/train/fc/summary.json", "train")
    opts = _options(sub.sbatch)
    assert {"--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=7", "-C", "nvme", "-A", ACCOUNT, "-p", "batch", "-t", "120",
            "--network=disable_rdzv_get", "--signal=USR1@300"} <= set(opts)
    assert not any(o.startswith("--ntasks=") for o in opts)
    assert sub.srun == f"{GPU_SRUN} -N 2 -n 16 --ntasks-per-node 8 -c 7 --kill-on-bad-exit=1"
    assert sub.command.startswith(f"( source {REPO_ROOT}/workflow/scripts/hpc_modules.sh {MODULES} && "
                                  "DCHAG_RDZV_GET_DISABLED=1 OMP_NUM_THREADS=7 ")
    # the job's command, run: every module loaded in order and checked, none purged, then srun
    status, log, srun = _run_job(tmp_path, sub.command)
    assert status == 0, log
    assert srun["calls"] == [f"load {m}" for m in MODULES.split()] + [f"is-loaded {m}" for m in MODULES.split()]
    assert f"hpc modules: loaded {MODULES}" in log
    assert srun["args"].startswith(sub.srun.removeprefix("srun ") + " /")
    env = srun["env"]
    assert env["DCHAG_RDZV_GET_DISABLED"] == "1" and env["OMP_NUM_THREADS"] == "7"
    assert env["LD_LIBRARY_PATH"].startswith("/opt/cray/pe/lib64:")  # the non-default CPE's libraries first
    # what rank 5 then sets before its process group starts (hpc_env on a ROCm build)
    from pipeline_src.parallel.hpc_env import rocm_defaults

    rank = rocm_defaults(5, env)
    assert {k: rank[k] for k in ("NCCL_SOCKET_IFNAME", "FI_CXI_RDZV_PROTO", "FI_CXI_DISABLE_HOST_REGISTER",
                                 "FI_CXI_RX_MATCH_MODE", "HSA_FORCE_FINE_GRAIN_PCIE")} == {
        "NCCL_SOCKET_IFNAME": "hsn0,hsn1,hsn2,hsn3", "FI_CXI_RDZV_PROTO": "alt_read",
        "FI_CXI_DISABLE_HOST_REGISTER": "1", "FI_CXI_RX_MATCH_MODE": "hybrid", "HSA_FORCE_FINE_GRAIN_PCIE": "1"}


@pytest.mark.parametrize("failure", ["load", "no module command"])
def test_modules_that_fail_stop_the_job_naming_them(tmp_path, failure):
    """A failed load, or no `module` command at all, ends the job before any rank starts."""
    sub = _frontier(tmp_path, TP16, "results/train/fc/summary.json", "train")
    status, log, srun = _run_job(tmp_path, sub.command, fail="rccl-net-plugin", module=failure == "load")
    assert status == 1 and srun == {}  # no rank started
    if failure == "load":
        assert "hpc modules: 'module load rccl-net-plugin' failed" in log
    else:
        assert "hpc modules: no 'module' command in this job's shell, so PrgEnv-gnu/8.7.0" in log


def test_tp2_fsdp4_dp4_trains_on_four_nodes_and_evaluates_on_one(tmp_path):
    """Four whole nodes for training; the evaluation on one (the checkpoint reshards)."""
    train = {"nproc": 32, "mesh": {"tp": 2, "fsdp": 4, "dp": 4}}
    sub = _frontier(tmp_path, train, "results/train/fc/summary.json", "train")
    assert {"--nodes=4", "--ntasks-per-node=8", "--cpus-per-task=7"} <= set(_options(sub.sbatch))
    assert sub.srun == f"{GPU_SRUN} -N 4 -n 32 --ntasks-per-node 8 -c 7 --kill-on-bad-exit=1"
    # its evaluation on one node (the checkpoint reshards to the smaller mesh)
    sub = _frontier(tmp_path / "eval", train, "results/evaluation/fc/metrics.csv", "evaluate",
                    evaluate={"nproc": 8, "mesh": {"tp": 2}})
    assert {"--nodes=1", "--ntasks=8", "--cpus-per-task=7", "-t", "30", "--network=disable_rdzv_get"} <= set(
        _options(sub.sbatch))
    assert sub.srun == f"{GPU_SRUN} -N 1 -n 8 -c 7 --kill-on-bad-exit=1"


def test_a_one_rank_job_submits(tmp_path):
    """One rank is not an MPI job (the plugin refuses tasks=1 with mpi): one task, no inner srun."""
    sub = _frontier(tmp_path, {"nproc": 1, "mesh": {"tp": 1}}, "results/train/fc/summary.json", "train")
    assert sub.sbatch is not None, sub.out[-3000:]
    assert {"--nodes=1", "--ntasks=1", "--cpus-per-task=7"} <= set(_options(sub.sbatch))
    assert "srun" not in sub.command and f"hpc_modules.sh {MODULES} && OMP_NUM_THREADS=7" in sub.command


def test_the_readmes_layout_override_submits_and_a_dropped_ranks_per_node_is_refused(tmp_path):
    """`--config evaluate=... hpc=...` as the README writes it; without hpc= a dry run refuses."""
    train = {"nproc": 16, "mesh": {"tp": 2}}
    sub = _frontier(tmp_path, train, "results/evaluation/fc/metrics.csv", "evaluate",
                    extra=("--config", "evaluate={nproc: 8, mesh: {tp: 2}}", "hpc={ranks_per_node: 8}"))
    assert {"--nodes=1", "--ntasks=8"} <= set(_options(sub.sbatch)), sub.out[-3000:]
    assert sub.srun == f"{GPU_SRUN} -N 1 -n 8 -c 7 --kill-on-bad-exit=1"
    # the same without hpc=: the command line replaced the profile's config list; refused in a dry run
    sub = _frontier(tmp_path / "dropped", train, "results/train/fc/summary.json", "train",
                    extra=("-n", "--config", "evaluate={nproc: 8, mesh: {tp: 2}}"))
    assert sub.sbatch is None and sub.command is None
    assert ("hpc.ranks_per_node is unset but this profile's nodes hold 8 ranks (hpc_ranks_per_node), so 16 ranks "
            "would ask 1 node(s) for 16 tasks each") in sub.out
    assert "add hpc='{ranks_per_node: 8}'" in sub.out


def test_nodes_set_by_hand_against_the_layout_are_refused(tmp_path):
    """Nodes come from the layout: a --set-resources that contradicts it stops the run."""
    sub = _frontier(tmp_path, TP16, "results/train/fc/summary.json", "train",
                    extra=("--set-resources", "train:nodes=1", "train:mpi=srun"))
    assert sub.sbatch is None
    assert ("resources {'nodes': 1} contradict the layout: 16 ranks with hpc.ranks_per_node 8 take 2 node(s) x 8 "
            "tasks") in sub.out


def test_every_submission_of_the_default_fits_frontiers_queue_and_cpu_jobs_fill_nodes(tmp_path):
    """The whole embedded default under the Frontier profile: the pre-flight check (sinfo's nodes
    and limits, the profile's bins) passes, and the per-year and per-image jobs go 8 to a node."""
    cfg = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    sub = _frontier(tmp_path, {}, "all", "", cfg=cfg, extra=("--forceall", "--jobs", "100"))
    assert "do not fit the cluster" not in sub.out, sub.out[-3000:]
    submitted = (tmp_path / "bin/submitted.txt").read_text().splitlines()
    groups = [re.sub(r" --wrap=.*", "", ln) for ln in submitted if "/slurm_logs/group_" in ln]
    assert {g.split("/slurm_logs/group_")[1].split("_")[0] for g in groups} == {"era5", "hs"}, sub.out[-3000:]
    for line in groups:  # 8 jobs of 7 cores side by side (the last group of a stage may hold fewer)
        opts = _options(line)
        cpus = int(next(o for o in opts if o.startswith("--cpus-per-task=")).split("=")[1])
        assert cpus % 7 == 0 and 7 < cpus <= 56 and int(opts[opts.index("--mem") + 1]) <= 512000, line
        assert int(opts[opts.index("-t") + 1]) <= 120, line
    assert sum("--cpus-per-task=56" in g for g in groups) >= 3  # full nodes: 8 of 13 years, 16 of 24 images
    # a request past the bin is refused before anything is submitted
    sub = _frontier(tmp_path / "long", {}, "all", "", cfg=cfg,
                    extra=("--forceall", "--set-resources", "era5_assemble:runtime=240"))
    assert "rule era5_assemble asks 240 min on 1 node(s); the queue allows 120 min to jobs of 1-91 nodes" in sub.out
    assert not (tmp_path / "long/bin/submitted.txt").exists()


@pytest.mark.parametrize("source", ["cds", "synthetic"])
def test_downloads_stay_on_the_login_node_and_synthetic_years_are_batch_jobs(tmp_path, source):
    """A grouped rule is never local: only synthetic ERA5 joins its year's job group."""
    cfg = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    cfg["era5"]["source"] = source
    sub = _frontier(tmp_path, {}, "results/era5/regridded/static/static.nc", "", cfg=cfg,
                    extra=("--allowed-rules", "era5_acquire", "era5_regrid"))
    submitted = (tmp_path / "bin/submitted.txt").read_text() if (tmp_path / "bin/submitted.txt").exists() else ""
    if source == "cds":  # run here (and fail: no CDS key, no internet), never submitted
        assert "era5_acquire" not in submitted and "localrule era5_acquire:" in sub.out, sub.out[-3000:]
    else:
        assert "group_era5_years_era5_acquire_era5_regrid" in submitted, sub.out[-3000:]
