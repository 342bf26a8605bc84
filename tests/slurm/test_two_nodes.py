"""Training and evaluation across two real Slurm nodes (n1, n2: network + UTS namespaces, cluster.sh).

Through `--profile slurm` from the repository root, with hpc.ranks_per_node 1 so that each job's
two ranks land on two nodes: a TP-2 forecaster whose rank on n2 is SIGKILLed mid-run (the step
must end, the job fail, the retry resume and the run end as an uninterrupted torchrun run does,
bit for bit), its evaluation across both nodes against one process, the MLflow run of both
attempts, and an FSDP-2 forecaster across the nodes against torchrun.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_src.train.restore import load_trained
from tests.e2e.test_workflow import TINY
from tests.slurm.helpers import sacct, snakemake, torchrun

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
TP_VARIANT, FSDP_VARIANT = "forecast-dchag-L", "forecast-fsdp"
STEPS, EVERY = 400, 50
RESOURCES = ("--set-resources", "train:cpus_per_task=1", "train:mem_mb=3000", "evaluate:cpus_per_task=1",
             "evaluate:mem_mb=3000")


def _config(wd: Path, variant: str, mesh: dict) -> None:
    cfg = dict(TINY, mlflow={"experiment": "two-nodes"}, hpc={"ranks_per_node": 1})
    cfg["train"] = dict(TINY["train"], steps=STEPS, checkpoint_every=EVERY, log_every=10, nproc=2, mesh=mesh,
                        variants=[{"name": variant, "task": "forecast", "arch": "dchag-L"}])
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cluster):
    wd = tmp_path_factory.mktemp("two-nodes")
    _config(wd, TP_VARIANT, {"tp": 2})
    proc = snakemake(wd, "era5_all", profile=False)  # the data stages locally: these tests are about training
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def _effective_config(wd: Path, mesh: dict) -> Path:
    (config,) = [p for p in (wd / "results/config").glob("effective-*.yaml")
                 if yaml.safe_load(p.read_text())["train"]["mesh"] == {"dp": "auto", "fsdp": 1, **mesh}]
    return config


def _processes(match: dict) -> list[int]:
    """Pids of training ranks whose environment holds every item of `match`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            env = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in item)
        except OSError:
            continue
        if b"pipeline_src.cli" in cmdline and b"train" in cmdline and all(env.get(k) == v for k, v in match.items()):
            found.append(int(entry.name))
    return found


class _KillOnN2(threading.Thread):
    """Once the run's first step checkpoint is complete, SIGKILL the rank on n2; time how long the
    rank on n1 lives on (the srun step ending)."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True)
        self.run_dir, self.killed_at, self.step_ended_after, self.done = run_dir, None, None, threading.Event()

    def run(self):
        deadline = time.time() + 400
        while time.time() < deadline and not self.done.is_set():
            if any(self.run_dir.glob("checkpoints/*/step_*/meta.json")):
                victims = _processes({"SLURMD_NODENAME": "n2", "SLURM_PROCID": "1"})
                peers = _processes({"SLURMD_NODENAME": "n1", "SLURM_PROCID": "0"})
                if victims and peers:
                    os.kill(victims[0], signal.SIGKILL)
                    self.killed_at = time.time()
                    while any(Path(f"/proc/{p}").exists() for p in peers) and time.time() < deadline:
                        time.sleep(0.05)
                    self.step_ended_after = time.time() - self.killed_at
                    return
            time.sleep(0.1)


def _submitted(out: str) -> dict[str, list[str]]:
    """{rule: Slurm job ids} from the snakemake output (the log path names the rule)."""
    jobs = {}
    for line in out.splitlines():
        if "SLURM jobid" in line:
            job = line.split("SLURM jobid ")[1].split()[0]
            rule = line.split("slurm_logs/rule_")[1].split("/")[0]
            jobs.setdefault(rule, []).append(job)
    return jobs


def _weights(path: Path) -> dict:
    model, _ = load_trained(path)
    return model.state_dict()


def _metrics(path: Path) -> dict:
    with open(path) as fh:
        return {(r["metric"], r["variable"], r["lead_hours"]): float(r["value"]) for r in csv.DictReader(fh)}


def test_tp2_across_nodes_survives_a_sigkill_on_n2_and_matches_torchrun(workdir):
    start = time.time()
    killer = _KillOnN2(workdir / "results/train" / TP_VARIANT)
    killer.start()
    proc = snakemake(workdir, "train_all", f"results/evaluation/{TP_VARIANT}/summary.json", *RESOURCES)
    killer.done.set()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert killer.killed_at is not None, "the rank on n2 was never found running"
    wall = time.time() - start
    jobs = _submitted(out)
    assert len(jobs["train"]) == 2 and len(jobs["evaluate"]) == 1, jobs  # the failed attempt and its retry
    steps = {r["job"]: r for r in sacct(jobs["train"] + jobs["evaluate"]) if r["job"].endswith(".0")}
    first, retry, evaluation = (steps[f"{j}.0"] for j in (*jobs["train"], *jobs["evaluate"]))
    assert all(r["nodes"] == "n[1-2]" and r["ntasks"] == "2" for r in (first, retry, evaluation)), steps
    assert first["state"] in ("FAILED", "CANCELLED") and retry["state"] == evaluation["state"] == "COMPLETED", steps
    summary = json.loads((workdir / "results/train" / TP_VARIANT / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["mesh"]["tp"] == 2
    assert summary["resumed_from_step"] >= EVERY and summary["resumed_from_step"] % EVERY == 0
    # the uninterrupted run, on one machine under torchrun
    config = _effective_config(workdir, {"tp": 2})
    reference = torchrun(workdir, config, workdir / "reference", TP_VARIANT)
    assert reference["resumed_from_step"] == 0
    assert [h["loss"] for h in summary["history"]] == [h["loss"] for h in reference["history"]]
    ours, theirs = _weights(workdir / "results/train" / TP_VARIANT / "final"), _weights(workdir / "reference/final")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the evaluation across both nodes against one process on the same checkpoint
    single = yaml.safe_load(config.read_text())
    single.update(mlflow={"enabled": False}, evaluate=dict(single["evaluate"], nproc=1, mesh={"tp": 1}))
    (workdir / "single.yaml").write_text(yaml.safe_dump(single))
    subprocess.run([sys.executable, "-m", "pipeline_src.cli", "evaluate", "variant", "--config", "single.yaml",
                    "--variant", TP_VARIANT, "--checkpoint", f"results/train/{TP_VARIANT}/final", "--assembled",
                    "results/era5/assembled", "--output-dir", "single-eval"], cwd=workdir, check=True,
                   capture_output=True, timeout=300,
                   env={**{k: v for k, v in os.environ.items() if k not in ("DCHAG_MLFLOW_RECORDS", "RANK")},
                        "OMP_NUM_THREADS": "1"})
    across, alone = _metrics(workdir / f"results/evaluation/{TP_VARIANT}/metrics.csv"), _metrics(workdir / "single-eval/metrics.csv")
    assert across.keys() == alone.keys() and len(across) > 10
    worst = max(abs(across[k] - alone[k]) / max(abs(alone[k]), 1e-12) for k in across)
    assert worst < 1e-5, worst
    # one MLflow train run across both attempts, filed from the records on the shared file system
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'results/mlflow/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])
    (train,) = [r for r in runs if r.data.tags.get("rule") == "train" and "slurm_job_ids" in r.data.tags]
    assert train.info.status == "FINISHED" and train.data.tags["slurm_job_ids"].split(",") == jobs["train"]
    assert sorted({m.step for m in client.get_metric_history(train.info.run_id, "loss")}) == list(range(1, STEPS + 1))
    print(f"two nodes, TP 2: SIGKILL of the n2 rank ended the step in {killer.step_ended_after:.1f} s; retry resumed "
          f"at step {summary['resumed_from_step']}; evaluation within {worst:.1e} of one process; {wall:.0f} s")


def test_fsdp2_across_nodes_matches_torchrun(workdir):
    start = time.time()
    _config(workdir, FSDP_VARIANT, {"tp": 1, "fsdp": 2})
    proc = snakemake(workdir, "train_all", *RESOURCES)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    jobs = _submitted(out)
    (step,) = [r for r in sacct(jobs["train"]) if r["job"].endswith(".0")]
    assert step["nodes"] == "n[1-2]" and step["ntasks"] == "2" and step["state"] == "COMPLETED", step
    summary = json.loads((workdir / "results/train" / FSDP_VARIANT / "summary.json").read_text())
    assert summary["mesh"] == {"dp": 1, "fsdp": 2, "tp": 1}
    reference = torchrun(workdir, _effective_config(workdir, {"tp": 1, "fsdp": 2}), workdir / "fsdp-reference",
                         FSDP_VARIANT)
    assert [h["loss"] for h in summary["history"]] == [h["loss"] for h in reference["history"]]
    print(f"two nodes, FSDP 2: {len(summary['history'])} steps equal to torchrun; {time.time() - start:.0f} s")
