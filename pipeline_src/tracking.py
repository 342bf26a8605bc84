"""MLflow tracking: one parent run per workflow invocation, one child run per stage execution.

Only rank 0 writes and nothing secret is logged. Inside a workflow, jobs (training included)
do not open the database: each writes a run record (pipeline_src.records) and the Snakemake
main process files them as child runs when the workflow ends; `dchag mlflow sync` files them
at any time. That keeps SQLite to one writer (it locks on parallel file systems), lets
compute nodes without database access take part, and saves each job the ~4 s that importing
MLflow and opening the store cost. Standalone calls (no workflow) log to MLflow directly.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import time
from pathlib import Path
from typing import Iterator

from .records import STATE_FILE, RunRecord, file_records
from .secrets import redact

log = logging.getLogger(__name__)

PARENT_ENV = "DCHAG_MLFLOW_PARENT_RUN"
RECORDS_ENV = "DCHAG_MLFLOW_RECORDS"  # folder for deferred run records of this invocation
DEFAULT_DB = Path("results/mlflow/mlflow.db")
VERSIONED = ("numpy", "xarray", "dask", "zarr", "netCDF4", "xarray-regrid", "xesmf", "torch",
             "mlflow", "snakemake", "dchag-pipeline")


def tracking_uri(mlflow_cfg: dict) -> str:
    """The configured tracking URI, or SQLite under results/mlflow of the working directory."""
    if mlflow_cfg.get("tracking_uri"):
        return mlflow_cfg["tracking_uri"]
    db = DEFAULT_DB.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of torchrun or srun."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


def package_versions() -> dict[str, str]:
    """Installed versions of the packages the results depend on."""
    out = {}
    for name in VERSIONED:
        try:
            out[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': 'value'} with MLflow-sized string values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


def _client(mlflow_cfg: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(mlflow_cfg))


# Marks the experiment as model development (not GenAI) for MLflow 3 clients that read the tag.
# MLflow 3.17's UI ignores it (checked in headless Chromium): its own GenAI / Model training
# switch decides, so the README links the runs with ?workflowType=machine_learning.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # experiments made before the tag
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    uri = client.tracking_uri
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created meanwhile by a concurrent job
        return client.get_experiment_by_name(name).experiment_id


class StageRun:
    """Handle on an MLflow run: metrics, parameters, artifacts. A no-op when disabled."""

    def __init__(self, client=None, run_id: str | None = None):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict) -> None:
        """Log a (nested) mapping of parameters, flattened and redacted."""
        if self.client:
            from mlflow.entities import Param

            flat = flatten(redact(params))
            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Log numeric metrics (non-numbers are skipped)."""
        if self.client:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step or 0) for k, v in _numeric(metrics).items()]
            if items:
                self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        """Set string tags on the run."""
        if self.client:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or folder) into the run's artifacts."""
        if self.client:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)


def metric_name(name: str) -> str:
    """An MLflow-legal metric name: characters MLflow refuses (commas, brackets, ...) become '_'."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def _numeric(metrics: dict) -> dict[str, float]:
    return {metric_name(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RecordedRun(StageRun):
    """A run written to a record on disk (pipeline_src.records), filed into MLflow by sync."""

    def __init__(self, folder: Path, name: str, tags: dict, key: str | None = None):
        super().__init__()
        self.record = RunRecord(folder, name, tags, key)

    def log_params(self, params: dict) -> None:
        self.record.header["params"].update(flatten(redact(params)))
        self.record.save()

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.record.add_metrics([[k, v, now, step or 0] for k, v in _numeric(metrics).items()])

    def set_tags(self, tags: dict) -> None:
        self.record.header["tags"].update({k: str(v) for k, v in tags.items()})
        self.record.save()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.record.header["artifacts"].append([str(Path(path).resolve()), artifact_path])
        self.record.save()

    def finish(self, status: str) -> None:
        """Write the final status (FINISHED, FAILED, or KILLED for a resumable stop)."""
        self.record.finish(status)


def start_workflow_run(mlflow_cfg: dict, run_name: str, params: dict, tags: dict | None = None,
                       records_root: str | Path = "results/mlflow/pending") -> str | None:
    """Create the parent run of a workflow invocation; export its id and record folder to jobs."""
    if not mlflow_cfg.get("enabled", True):
        return None
    client = _client(mlflow_cfg)
    exp = _experiment_id(client, mlflow_cfg["experiment"])
    run = client.create_run(exp, run_name=run_name, tags={"kind": "workflow", **(tags or {})})
    StageRun(client, run.info.run_id).log_params(params)
    os.environ[PARENT_ENV] = run.info.run_id
    os.environ[RECORDS_ENV] = str((Path(records_root) / run.info.run_id).resolve())
    return run.info.run_id


def ingest_records(mlflow_cfg: dict, folder: str | Path, parent_run_id: str | None) -> int:
    """File the run records of one invocation's folder as child runs of its parent (incremental)."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return 0
    client = _client(mlflow_cfg)
    exp = _experiment_id(client, mlflow_cfg["experiment"])
    return file_records(client, exp, folder, parent_run_id, folder.parent.parent / STATE_FILE)


def sync_pending(mlflow_cfg: dict, pending_root: str | Path = "results/mlflow/pending") -> int:
    """File every pending record of every invocation now (`dchag mlflow sync`): running
    trainings appear in `mlflow ui` with their metrics so far."""
    root = Path(pending_root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return sum(ingest_records(mlflow_cfg, f, f.name) for f in folders)


def end_workflow_run(mlflow_cfg: dict, ok: bool) -> None:
    """File the jobs' run records, then close the parent run FINISHED or FAILED."""
    run_id = os.environ.get(PARENT_ENV)
    if not run_id or not mlflow_cfg.get("enabled", True):
        return
    n = ingest_records(mlflow_cfg, os.environ.get(RECORDS_ENV, ""), run_id)
    log.info("MLflow: filed %d stage run(s) under workflow run %s", n, run_id)
    _client(mlflow_cfg).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def _status(exc: BaseException) -> str:
    """KILLED for a stop that a later attempt resumes (exceptions say so), FAILED otherwise."""
    return getattr(exc, "mlflow_status", "FAILED")


def run_name(rule: str, wildcards: dict | None = None) -> str:
    """A child run's name: the rule and what it worked on ('era5_regrid pressure 2010')."""
    return " ".join([rule, *map(str, (wildcards or {}).values())])


@contextlib.contextmanager
def stage_run(mlflow_cfg: dict, stage: str, rule: str | None = None,
              params: dict | None = None, key: str | None = None,
              wildcards: dict | None = None) -> Iterator[StageRun]:
    """A child run of the workflow's parent run (or a standalone run) for one stage execution.

    Named after the rule and its `wildcards` (the job's group and period, image, variant...),
    which are also tags, so the runs list reads like the DAG. With a `key`, a later attempt
    of the same work (a training resumed after its time limit) continues the same record, so
    it stays one MLflow run with one metric history.
    """
    if not mlflow_cfg.get("enabled", True) or not is_rank_zero():
        yield StageRun()
        return
    tags = {"stage": stage, "rule": rule or stage, **{k: str(v) for k, v in (wildcards or {}).items()}}
    name = run_name(rule or stage, wildcards)
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    records = os.environ.get(RECORDS_ENV)
    if records:
        handle = RecordedRun(Path(records), name, tags, key)
        jobs = [j for j in handle.record.header["tags"].get("slurm_job_ids", "").split(",") if j]
        if tags.get("slurm_job_id") and tags["slurm_job_id"] not in jobs:
            handle.set_tags({"slurm_job_ids": ",".join(jobs + [tags["slurm_job_id"]])})
        handle.log_params({**(params or {}), **package_versions()})
        try:
            yield handle
        except BaseException as exc:
            handle.finish(_status(exc))
            raise
        handle.finish("FINISHED")
        return
    client = _client(mlflow_cfg)
    exp = _experiment_id(client, mlflow_cfg["experiment"])
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, run_name=name, tags=tags)
    handle = StageRun(client, run.info.run_id)
    handle.log_params({**(params or {}), **package_versions()})
    try:
        yield handle
    except BaseException as exc:
        client.set_terminated(run.info.run_id, _status(exc))
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
