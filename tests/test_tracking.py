"""MLflow: deferred run records filed as child runs, redaction, standalone runs."""

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from pipeline_src import tracking

SECRET = "zz-secret-cds-key-0123456789"


@pytest.fixture
def mlcfg(tmp_path):
    return {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t", "enabled": True}


def test_records_become_child_runs(tmp_path, mlcfg, monkeypatch):
    monkeypatch.setenv("CDSAPI_KEY", SECRET)
    for var in (tracking.PARENT_ENV, tracking.RECORDS_ENV, "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    parent = tracking.start_workflow_run(mlcfg, "wf", {"a": {"b": 1}, "api_key": "x"},
                                         records_root=tmp_path / "pending")
    assert os.environ[tracking.PARENT_ENV] == parent
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    art = tmp_path / "map.png"
    art.write_bytes(b"\x89PNG fake")
    with tracking.stage_run(mlcfg, "era5_regrid", "era5_regrid", {"note": f"key={SECRET}"},
                            wildcards={"group": "pressure", "period": "2010"}) as run:
        run.log_metrics({"fields": 10, "seconds": 2.5, "backend": "not a number"})
        run.set_tags({"regrid_backend": "xarray-regrid"})
        run.log_artifact(art, "previews")
    with pytest.raises(RuntimeError):
        with tracking.stage_run(mlcfg, "era5_assemble", "era5_assemble", {}):
            raise RuntimeError("boom")
    tracking.end_workflow_run(mlcfg, ok=False)

    client = MlflowClient(mlcfg["tracking_uri"])
    exp = client.get_experiment_by_name("t")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # `mlflow ui` opens on the runs
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"wf", "era5_regrid pressure 2010", "era5_assemble"}
    assert runs["wf"].info.status == "FAILED" and runs["wf"].data.params["api_key"] == "***"
    child = runs["era5_regrid pressure 2010"]
    assert child.data.tags["group"] == "pressure" and child.data.tags["period"] == "2010"
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["stage"] == "era5_regrid" and child.data.tags["slurm_job_id"] == "4242"
    assert child.data.tags["regrid_backend"] == "xarray-regrid"
    assert child.data.metrics == {"fields": 10.0, "seconds": 2.5}
    assert child.data.params["note"] == "key=***" and "version.xarray" in child.data.params
    assert [f.path for f in client.list_artifacts(child.info.run_id, "previews")] == ["previews/map.png"]
    assert runs["era5_assemble"].info.status == "FAILED"
    assert not (tmp_path / "pending" / parent).exists()
    assert SECRET.encode() not in (tmp_path / "mlflow.db").read_bytes()


def test_standalone_run_and_non_zero_rank(mlcfg, monkeypatch):
    for var in (tracking.PARENT_ENV, tracking.RECORDS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run(mlcfg, "s") as run:
        assert run.client is None  # rank 1 never writes
    monkeypatch.setenv("RANK", "0")
    with tracking.stage_run(mlcfg, "s") as run:
        run.log_metrics({"x": 1})
    client = MlflowClient(mlcfg["tracking_uri"])
    (r,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert r.info.status == "FINISHED" and r.data.metrics == {"x": 1.0}
    assert "mlflow.parentRunId" not in r.data.tags


class _Stopped(Exception):
    mlflow_status = "KILLED"


def test_keyed_record_resumes_and_syncs_while_running(tmp_path, mlcfg, monkeypatch):
    """A run stopped and resumed under one key is one MLflow run with one metric history,
    visible (with its metrics so far) after `dchag mlflow sync` while it is still going."""
    for var in (tracking.PARENT_ENV, tracking.RECORDS_ENV, "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    pending = tmp_path / "mlflow" / "pending"
    parent = tracking.start_workflow_run(mlcfg, "wf", {}, records_root=pending)
    monkeypatch.setenv("SLURM_JOB_ID", "11")
    with pytest.raises(_Stopped):
        with tracking.stage_run(mlcfg, "train", "train", {"lr": 1}, key="train-a-k") as run:
            for step in (1, 2, 3):
                run.log_metrics({"loss": 1.0 / step}, step=step)
            raise _Stopped()
    assert tracking.sync_pending(mlcfg, pending) == 1
    client = MlflowClient(mlcfg["tracking_uri"])
    exp = client.get_experiment_by_name("t").experiment_id
    (train,) = [r for r in client.search_runs([exp]) if r.info.run_name == "train"]
    assert train.info.status == "KILLED" and train.data.tags["mlflow.parentRunId"] == parent
    assert [m.step for m in client.get_metric_history(train.info.run_id, "loss")] == [1, 2, 3]
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    with tracking.stage_run(mlcfg, "train", "train", {"lr": 1}, key="train-a-k") as run:
        run.log_metrics({"loss": 0.2}, step=4)
        assert tracking.sync_pending(mlcfg, pending) == 1  # mid-run: RUNNING, 4 points
        assert client.get_run(train.info.run_id).info.status == "RUNNING"
        run.log_metrics({"loss": 0.1}, step=5)
    tracking.end_workflow_run(mlcfg, ok=True)
    runs = [r for r in client.search_runs([exp]) if r.info.run_name == "train"]
    assert [r.info.run_id for r in runs] == [train.info.run_id]
    done = client.get_run(train.info.run_id)
    assert done.info.status == "FINISHED" and done.data.tags["slurm_job_ids"] == "11,12"
    assert [m.step for m in client.get_metric_history(train.info.run_id, "loss")] == [1, 2, 3, 4, 5]
    assert not (pending / parent).exists() and json.loads((tmp_path / "mlflow" / "synced.json").read_text()) == {}
