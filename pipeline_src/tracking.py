"""MLflow tracking: one parent run per workflow invocation, one child run per stage execution.

Only rank 0 writes and nothing secret is logged. Inside a workflow, short stage jobs do
not open the database: each writes a run record (JSON) and the Snakemake main process
files them as child runs when the workflow ends. That keeps SQLite to one writer (it
locks on parallel file systems), lets compute nodes without database access take part,
and saves each job the ~4 s that importing MLflow and opening the store cost.
Standalone calls (no workflow) and long jobs log to MLflow directly.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

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


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = client.tracking_uri
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
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


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RecordedRun(StageRun):
    """A run written to a JSON record, filed into MLflow later by `ingest_records`."""

    def __init__(self, folder: Path, name: str, tags: dict):
        super().__init__()
        self.path = folder / f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.json"
        self.record = {"name": name, "tags": dict(tags), "params": {}, "metrics": [],
                       "artifacts": [], "start_ms": int(time.time() * 1000)}

    def log_params(self, params: dict) -> None:
        self.record["params"].update(flatten(redact(params)))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.record["metrics"] += [[k, v, now, step or 0] for k, v in _numeric(metrics).items()]

    def set_tags(self, tags: dict) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.record["artifacts"].append([str(Path(path).resolve()), artifact_path])

    def finish(self, status: str) -> None:
        """Write the record atomically with its final status."""
        self.record["status"] = status
        self.record["end_ms"] = int(time.time() * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        os.replace(tmp, self.path)


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
    """File every run record in `folder` as a child run of the parent; return how many."""
    folder = Path(folder)
    records = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not records:
        return 0
    from mlflow.entities import Metric, Param, RunTag

    client = _client(mlflow_cfg)
    exp = _experiment_id(client, mlflow_cfg["experiment"])
    for path in records:
        rec = json.loads(path.read_text())
        tags = dict(rec["tags"])
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp, run_name=rec["name"], tags=tags, start_time=rec["start_ms"])
        rid = run.info.run_id
        params = [Param(k, v) for k, v in rec["params"].items()]
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i:i + 100])
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in rec["metrics"]]
        for i in range(0, len(metrics), 500):
            client.log_batch(rid, metrics=metrics[i:i + 500])
        for src, dest in rec["artifacts"]:
            if Path(src).is_dir():
                client.log_artifacts(rid, src, dest)
            elif Path(src).exists():
                client.log_artifact(rid, src, dest)
        client.set_terminated(rid, rec.get("status", "FAILED"), end_time=rec.get("end_ms"))
        path.unlink()
    folder.rmdir()
    return len(records)


def end_workflow_run(mlflow_cfg: dict, ok: bool) -> None:
    """File the jobs' run records, then close the parent run FINISHED or FAILED."""
    run_id = os.environ.get(PARENT_ENV)
    if not run_id or not mlflow_cfg.get("enabled", True):
        return
    n = ingest_records(mlflow_cfg, os.environ.get(RECORDS_ENV, ""), run_id)
    log.info("MLflow: filed %d stage run(s) under workflow run %s", n, run_id)
    _client(mlflow_cfg).set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextlib.contextmanager
def stage_run(mlflow_cfg: dict, stage: str, rule: str | None = None,
              params: dict | None = None) -> Iterator[StageRun]:
    """A child run of the workflow's parent run (or a standalone run) for one stage execution."""
    if not mlflow_cfg.get("enabled", True) or not is_rank_zero():
        yield StageRun()
        return
    tags = {"stage": stage, "rule": rule or stage}
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    records = os.environ.get(RECORDS_ENV)
    if records:
        handle = RecordedRun(Path(records), rule or stage, tags)
        handle.log_params({**(params or {}), **package_versions()})
        try:
            yield handle
        except BaseException:
            handle.finish("FAILED")
            raise
        handle.finish("FINISHED")
        return
    client = _client(mlflow_cfg)
    exp = _experiment_id(client, mlflow_cfg["experiment"])
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, run_name=rule or stage, tags=tags)
    handle = StageRun(client, run.info.run_id)
    handle.log_params({**(params or {}), **package_versions()})
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
