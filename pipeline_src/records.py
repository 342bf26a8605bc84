"""MLflow run records: what jobs write instead of opening the database, and how they are filed.

A record is two files in the invocation's folder (results/mlflow/pending/<parent run id>/):
<id>.json (name, tags, params, artifacts, status; rewritten atomically on change) and
<id>.metrics.jsonl (one metric point per line, appended as it is logged). Filing is
incremental and idempotent: results/mlflow/synced.json remembers each record's MLflow run and
how many metric lines it has filed, so `dchag mlflow sync` can be run at any time (a two-day
training shows up in `mlflow ui` while it runs) and the workflow files the rest when it ends.
A record with a key (training: variant + run fingerprint) is reopened by the next attempt, so a
run stopped by its time limit and resumed by the retry stays one MLflow run with one history.
Only one process files at a time (a lock file), keeping SQLite to one writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

TERMINAL = ("FINISHED", "FAILED")  # filed for good; KILLED (stopped, resumable) stays pending
STATE_FILE = "synced.json"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class RunRecord:
    """One run's record on disk; metrics are appended, the header rewritten when it changes."""

    def __init__(self, folder: Path, name: str, tags: dict, key: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{key or f'{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}'}.json"
        self.metrics_path = self.path.with_suffix(".metrics.jsonl")
        if key and self.path.exists():  # a resumed attempt continues the same run
            self.header = json.loads(self.path.read_text())
            self.header["tags"].update(tags)
            self.header.pop("end_ms", None)
        else:
            self.header = {"name": name, "tags": dict(tags), "params": {}, "artifacts": [],
                           "start_ms": int(time.time() * 1000)}
        self.header["status"] = "RUNNING"
        self.save()

    def save(self) -> None:
        """Rewrite the header atomically."""
        _write_json(self.path, self.header)

    def add_metrics(self, items: list[list]) -> None:
        """Append [key, value, timestamp ms, step] points."""
        if items:
            with open(self.metrics_path, "a") as fh:
                fh.write("".join(json.dumps(i) + "\n" for i in items))

    def finish(self, status: str) -> None:
        """Final status: FINISHED, FAILED, or KILLED (stopped; a later attempt may resume it)."""
        self.header["status"] = status
        self.header["end_ms"] = int(time.time() * 1000)
        self.save()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _metric_lines(path: Path, start: int) -> list[list]:
    if not path.exists():
        return []
    with open(path) as fh:
        lines = fh.readlines()
    complete = [ln for ln in lines if ln.endswith("\n")]  # a line being appended is left for later
    return [json.loads(ln) for ln in complete[start:]]


def file_records(client, experiment_id: str, folder: Path, parent_run_id: str | None, state_path: Path) -> int:
    """File every record of `folder` into MLflow (new runs, new params, new metric lines,
    status); remove records that are done. Returns the number of records touched."""
    from mlflow.entities import Metric, Param, RunStatus

    if not folder.is_dir():
        return 0
    with _lock(state_path.with_name(".sync.lock")):
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        touched = 0
        for path in sorted(folder.glob("*.json")):
            header = json.loads(path.read_text())
            entry = state.get(str(path))
            tags = dict(header["tags"])
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            if entry is None:
                run = client.create_run(experiment_id, run_name=header["name"], tags=tags,
                                        start_time=header["start_ms"])
                entry = state[str(path)] = {"run_id": run.info.run_id, "lines": 0, "params": []}
            rid = entry["run_id"]
            for k, v in tags.items():
                client.set_tag(rid, k, v)
            new = [Param(k, v) for k, v in header["params"].items() if k not in entry["params"]]
            for i in range(0, len(new), 100):
                client.log_batch(rid, params=new[i:i + 100])
            entry["params"] += [p.key for p in new]
            metrics_path = path.with_suffix(".metrics.jsonl")
            lines = _metric_lines(metrics_path, entry["lines"])
            points = [Metric(k, v, ts, step) for k, v, ts, step in lines]
            for i in range(0, len(points), 500):
                client.log_batch(rid, metrics=points[i:i + 500])
            entry["lines"] += len(lines)
            status = header.get("status", "RUNNING")
            if status in TERMINAL:
                for src, dest in header["artifacts"]:
                    if Path(src).is_dir():
                        client.log_artifacts(rid, src, dest)
                    elif Path(src).exists():
                        client.log_artifact(rid, src, dest)
                client.set_terminated(rid, status, end_time=header.get("end_ms"))
                path.unlink()
                metrics_path.unlink(missing_ok=True)
                del state[str(path)]
            else:
                client.update_run(rid, RunStatus.to_string(RunStatus.from_string(status)))
            touched += 1
        _write_json(state_path, state)
        if not any(folder.iterdir()):
            folder.rmdir()
    return touched
