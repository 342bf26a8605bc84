"""Snakemake end to end on a tiny config in a temporary directory; MLflow read back."""

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import xarray as xr
import yaml
from mlflow.tracking import MlflowClient

from pipeline_src.config import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
SECRET = "e2e-sentinel-cds-key-9f8e7d6c"
TINY = {
    "run_name": "e2e",
    "era5": {
        "source": "synthetic",
        "years": {"train": [2010], "val": [2011], "test": {"start": "2012-01-01", "end": "2012-06-30"}},
        "hours": [0, 12],
        "channels": ["z_500", "t_850", "t2m", "orography"],
        "grid_deg": 10.0,
        "synthetic": {"seed": 1},
        "assemble": {"shard_steps": 32},
    },
    "mlflow": {"experiment": "e2e"},
    "model": {"dim": 32, "depth": 1, "heads": 2, "agg_heads": 2, "mlp_ratio": 2},
    "train": {"steps": 6, "micro_batch": 2, "checkpoint_every": 3, "log_every": 2, "warmup_steps": 2},
    "forecast": {"targets": ["z_500", "t2m"], "lead_days": [1, 2]},
    "mae": {"augment": {"flips": True, "shift": 0.5}},
    "hyperspectral": {"synthetic": {"images": 3, "lines": 32, "samples": 48, "bands": 100},
                      "bands": {"expected": 100, "bin": 4}, "tiles": {"size": [16, 16]}},
    "report": {"channels": [8, 16], "dim": 16, "heads": 2, "image": [16, 32], "steps": 1, "tree": [2]},
}
VARIANTS = ["forecast-tp-baseline", "forecast-dchag-L", "mae-dchag-L"]


@functools.cache
def _no_slurm_controller() -> str:
    """A folder whose `scontrol` fails at once, for the front of PATH.

    Importing snakemake imports the Slurm executor plugin, which runs `scontrol show config`
    to choose its status command. Where Slurm's client is installed but no controller runs
    (CI installs it for tests/slurm) that call waits 9-10 s, on every snakemake command of
    these local runs, which never use Slurm.
    """
    folder = Path(tempfile.mkdtemp(prefix="no-slurm-"))
    atexit.register(shutil.rmtree, folder, True)
    shim = folder / "scontrol"
    shim.write_text("#!/bin/sh\nexit 1\n")
    shim.chmod(0o755)
    return str(folder)


def local_env(**extra) -> dict:
    """The environment of a local snakemake command: this Python first on PATH, no Slurm controller."""
    env = dict(os.environ, **extra,
               PATH=os.pathsep.join([_no_slurm_controller(), str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def snakemake(workdir: Path, *args, check=True):
    env = local_env(CDSAPI_KEY=SECRET)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    proc = snakemake(wd)
    return wd, proc


def _runs(wd):
    client = MlflowClient(f"sqlite:///{wd / 'results/mlflow/mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    return client, client.search_runs([exp.experiment_id], max_results=500)


def test_outputs(workflow_run):
    wd, _ = workflow_run
    out = wd / "results/era5/assembled"
    train = xr.open_zarr(out / "train.zarr", consolidated=False)
    assert train.fields.shape == (730, 4, 32, 64)  # 365 days x 2 hours
    assert list(train.channel.values) == ["z_500", "t_850", "t2m", "orography"]
    assert (out / "normalization.json").exists() and (out / "climatology.zarr").is_dir()
    assert (wd / "results/era5/regridded/pressure/2011.png").stat().st_size > 1000
    assert not list(wd.rglob(".*.tmp-*"))  # no temporaries left


def test_snakemake_report_renders_every_section(workflow_run, tmp_path):
    """`snakemake --report` builds one self-contained HTML file holding every category of plots."""
    wd, _ = workflow_run
    snakemake(wd, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    for category in ("ERA5 regridding", "Hyperspectral", "Training", "Evaluation", "Memory and throughput"):
        assert category in html, category
    for name in ("loss.png", "scorecard.csv", "measured.csv", "spectra.png"):
        assert name in html, name
    assert not re.findall(r'(?:src|href)="https?://', html)  # nothing fetched when opened offline


def test_mlflow_parent_and_children(workflow_run):
    wd, _ = workflow_run
    client, runs = _runs(wd)
    parents = [r for r in runs if r.data.tags.get("kind") == "workflow"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    by_rule = {}
    for r in children:
        by_rule.setdefault(r.data.tags["rule"], []).append(r)
    # 3 years x (pressure, single) + static, for acquire and regrid; one assemble
    assert {k: len(v) for k, v in by_rule.items()} == {"era5_acquire": 7, "era5_regrid": 7,
                                                       "era5_assemble": 1, "train": 3,
                                                       "hs_preprocess": 3, "hs_tiles": 1, "evaluate": 2, "evaluate_mae": 1,
                                                       "evaluate_baselines": 1, "scorecard": 1, "report": 1}
    assert all(r.info.status == "FINISHED" for r in children)
    names = {r.info.run_name for r in children}  # the runs list reads like the DAG
    assert {"era5_acquire static static", "era5_regrid pressure 2010", "era5_regrid single 2012",
            "train forecast-dchag-L", "train mae-dchag-L", "hs_preprocess plant_000",
            "evaluate forecast-tp-baseline", "evaluate_mae mae-dchag-L", "era5_assemble"} <= names
    regrid = next(r for r in by_rule["era5_regrid"] if r.info.run_name == "era5_regrid single 2012")
    assert regrid.data.tags["group"] == "single" and regrid.data.tags["period"] == "2012"
    assert regrid.data.metrics["fields"] == 2 * 182 * 1  # only the test split's half year, t2m
    assert next(r for r in by_rule["train"] if r.info.run_name == "train mae-dchag-L").data.tags["variant"] == "mae-dchag-L"
    assert regrid.data.tags["stage"] == "era5_regrid" and regrid.data.tags["regrid_backend"] == "xarray-regrid"
    assert regrid.data.metrics["fields_per_s"] > 0 and "version.xarray" in regrid.data.params
    assert [f.path for f in client.list_artifacts(regrid.info.run_id, "previews")][0].endswith(".png")
    asm = by_rule["era5_assemble"][0]
    assert {f.path for f in client.list_artifacts(asm.info.run_id, "data")} == \
        {"data/normalization.json", "data/manifest.json"}
    assert parents[0].data.params["era5.grid_deg"] == "10.0"


def test_training_outputs_and_tracking(workflow_run):
    from pipeline_src.train.restore import load_trained

    wd, _ = workflow_run
    client, runs = _runs(wd)
    train_runs = {r.data.params["variant"]: r for r in runs if r.data.tags.get("rule") == "train"}
    assert sorted(train_runs) == sorted(VARIANTS)
    for name in VARIANTS:
        out = wd / "results/train" / name
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 6 and len(summary["history"]) == 6
        assert summary["world_size"] == 2 and summary["mesh"] == {"dp": 1, "fsdp": 1, "tp": 2}
        assert len(summary["peak_memory_mb_per_rank"]) == 2
        model, meta = load_trained(out / "final")
        assert meta["variant"] == name and meta["step"] == 6
        assert (out / "loss.png").stat().st_size > 1000
        assert [p.name for p in (out / "checkpoints").glob("*/step_*")] == ["step_00000003"]
        run = train_runs[name]
        assert run.data.params["world_size"] == "2" and run.data.params["launcher"] == "torchrun"
        # what the collectives ran on (on Frontier also ROCm, RCCL and the network RCCL chose)
        assert (run.data.params["comm.backend"], run.data.params["comm.nodes"]) == ("gloo", "1")
        assert run.data.params["comm.torch"] == __import__("torch").__version__
        assert run.data.params["final_checkpoint"].endswith(f"results/train/{name}/final")
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
        # throughput at every host sync: log_every 2, the step-3 checkpoint, the last step
        assert [m.step for m in client.get_metric_history(run.info.run_id, "samples_per_s")] == [2, 3, 4, 6]
        assert {"lr", "samples_per_s", "grad_norm", "peak_memory_mb_rank0",
                "peak_memory_mb_rank1"} <= set(run.data.metrics)
        assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"summary.json", "loss.png"}
    assert train_runs["forecast-dchag-L"].data.params["model.partitions"] == "2"
    mae_params = train_runs["mae-dchag-L"].data.params
    assert (mae_params["mae.loss"], mae_params["mae.augment.flips"], mae_params["mae.augment.shift"]) == \
        ("plant", "True", "0.5")
    assert not list(wd.rglob(".*.partial"))


def test_hyperspectral_outputs_and_tracking(workflow_run):
    import zarr

    wd, _ = workflow_run
    out = wd / "results/hyperspectral"
    stats = json.loads((out / "tiles/stats.json").read_text())
    assert sorted(stats["splits"].values()) == ["test", "train", "val"]
    assert stats["tiles"] == {"train": 6, "val": 6, "test": 6}  # (32/16) x (48/16) per image
    train = zarr.open_group(str(out / "tiles/train.zarr"), mode="r")
    assert train["tiles"].shape == (6, len(stats["wavelengths"]), 16, 16)
    assert (out / "spectra.png").stat().st_size > 1000
    assert (out / "calibrated/plant_000.png").stat().st_size > 1000
    client, runs = _runs(wd)
    pre = [r for r in runs if r.data.tags.get("rule") == "hs_preprocess"]
    assert all(0.02 < r.data.metrics["plant_fraction"] < 0.6 for r in pre)
    assert {f.path for f in client.list_artifacts(pre[0].info.run_id, "previews")} == \
        {f"previews/{pre[0].data.params['image']}.png"}
    tiles = next(r for r in runs if r.data.tags.get("rule") == "hs_tiles")
    assert tiles.data.metrics["tiles_train"] == 6
    assert len(client.get_metric_history(tiles.info.run_id, "band_mean")) == len(stats["wavelengths"])
    mae = json.loads((wd / "results/train/mae-dchag-L/summary.json").read_text())
    assert mae["world_size"] == 2


def test_oracles_regenerate_the_workflows_scenes(workflow_run):
    """`dchag bench oracles` finds the stage's plant masks in the regenerated scenes, and its
    predictors order as they must: noise-free truth < leaf shading < the zero reference."""
    from pipeline_src.bench.oracles import pool, score_split
    from pipeline_src.config import load

    wd, _ = workflow_run
    tiles = wd / "results/hyperspectral/tiles"
    stats = json.loads((tiles / "stats.json").read_text())
    cfg = load(str(wd / "config.yaml"))
    draws = [score_split(cfg, tiles, "val", stats, seed=k) for k in range(cfg.data["evaluate"]["mae_draws"])]
    r = pool(draws)
    assert len(draws) == 4 and all(d["mask_iou"] > 0.9 for d in draws) and r["pixels"] > 0
    assert r["noise_free"] < r["leaf_shading"] < r["ref_zero"]
    # the evaluation scored the same masks (evaluate.seed 0, 1, 2, 3), pooled alike
    ev = json.loads((wd / "results/evaluation/mae-dchag-L/summary.json").read_text())["splits"]["val"]
    assert ev["plant_pixels"] == r["pixels"] and len({d["pixels"] for d in draws}) > 1
    for ref in ("ref_zero", "ref_visible_mean", "ref_local_mean"):
        assert abs(ev[f"masked_mse_{ref}"] - r[ref]) < 1e-5 * r[ref], ref
    # and so did training's held-out curve (mae.seed 0 and mae.heldout_draws 4): its last point is
    # the evaluation's val number of the same final weights
    heldout = json.loads((wd / "results/train/mae-dchag-L/summary.json").read_text())["heldout"]
    assert heldout["heldout_loss"] == pytest.approx(ev["masked_mse"], rel=1e-4)
    for ref in ("ref_zero", "ref_visible_mean", "ref_local_mean"):
        assert heldout[f"heldout_{ref}"] == pytest.approx(r[ref], rel=1e-5), ref


def test_evaluation_outputs_and_tracking(workflow_run):
    import csv

    wd, _ = workflow_run
    ev = wd / "results/evaluation"
    for name in ("forecast-tp-baseline", "forecast-dchag-L", "climatology", "persistence", "damped_persistence"):
        rows = list(csv.DictReader(open(ev / name / "metrics.csv")))
        assert {r["variant"] for r in rows} == {name}
        assert {(r["variable"], r["lead_hours"]) for r in rows} == {(v, h) for v in ("z_500", "t2m") for h in ("24", "48")}
        assert {r["metric"] for r in rows} >= {"rmse", "rmse_climax", "acc", "bias", "pearson", "activity"}
        assert all(r["convention"] for r in rows)
        assert (ev / name / "data/per_init.nc").is_file() and (ev / name / "plots/rmse_maps.png").stat().st_size > 1000
    damping = json.loads((ev / "damped_persistence/data/damping.json").read_text())
    assert damping["fitted_on"] == "train" and set(damping["coefficients"]) == {"z_500", "t2m"}
    assert all(len(v) == 2 for v in damping["coefficients"].values())  # one per lead
    assert (ev / "forecast-dchag-L/plots/example_0024h.png").stat().st_size > 1000
    with xr.open_dataset(ev / "forecast-dchag-L/data/per_init.nc") as ds:
        assert ds.sizes["init_time"] == len(range(0, 364 - 4, 5))  # Jan-Jun 2012 at 0 and 12 UTC, leads 1 and 2 days
    for name in ("forecast-tp-baseline", "forecast-dchag-L"):  # the forecasts in WeatherBench2's layout
        with xr.open_zarr(ev / name / "forecast.zarr") as fc:
            assert fc.sizes["time"] == len(range(0, 364 - 4, 5)) and fc.sizes["prediction_timedelta"] == 2
            assert set(fc.data_vars) == {"geopotential", "2m_temperature"}
        assert (ev / name / "truth.zarr/.zmetadata").is_file()
    card = (ev / "scorecard.md").read_text()
    for name in VARIANTS + ["climatology", "persistence", "damped_persistence"]:
        assert f"| {name} |" in card
    assert "RMSE differences with confidence intervals" in card and "| forecast-dchag-L | forecast-tp-baseline |" in card
    assert {p.name for p in (ev / "scorecard_plots").iterdir()} >= {"rmse_vs_lead.png", "acc_vs_lead.png", "mae_loss.png"}
    mae = json.loads((ev / "mae-dchag-L/summary.json").read_text())
    assert set(mae["splits"]) == {"val", "test"} and mae["splits"]["test"]["plant_pixels"] > 0
    assert all(f"masked_mse_{ref}" in mae["splits"]["test"] for ref in ("ref_zero", "ref_visible_mean", "ref_local_mean"))
    assert "| mae-dchag-L | test |" in card and "| local mean |" in card
    probe = mae["probe"]  # the leaf-trait probe: the synthetic scenes carry their leaves' traits
    assert probe["traits"] == ["cab", "cw", "cm"] and probe["patches"]["train"] > 0 < probe["patches"]["test"]
    assert all(set(probe["scores"][t]) == {"pretrained", "random", "spectrum", "training mean"} for t in probe["traits"])
    assert "## Leaf-trait probe" in card and "| cab | pretrained |" in card
    assert (ev / "mae-dchag-L/plots/reconstruction.png").stat().st_size > 1000
    client, runs = _runs(wd)
    evals = {r.data.params.get("variant", "baselines"): r for r in runs if r.data.tags.get("rule") in ("evaluate", "evaluate_mae")}
    evals.update({"baselines": r for r in runs if r.data.tags.get("rule") == "evaluate_baselines"})
    assert sorted(evals) == sorted(VARIANTS + ["baselines"])
    fc = evals["forecast-dchag-L"]
    assert "WeatherBench2" in fc.data.tags["metric_conventions"]
    assert [m.step for m in client.get_metric_history(fc.info.run_id, "rmse.z_500")] == [24, 48]
    assert {f.path for f in client.list_artifacts(fc.info.run_id)} >= {"metrics.csv", "plots", "data"}
    assert "test.psnr" in evals["mae-dchag-L"].data.metrics
    assert all(evals[v].data.params["comm.backend"] == "gloo" for v in VARIANTS)  # what the ranks ran on
    card_run = next(r for r in runs if r.data.tags.get("rule") == "scorecard")
    assert {f.path for f in client.list_artifacts(card_run.info.run_id)} >= {"scorecard.md", "scorecard.csv",
                                                                               "scorecard_plots"}


def test_report_outputs_and_tracking(workflow_run):
    import csv

    wd, _ = workflow_run
    out = wd / "results/report"
    rows = list(csv.DictReader(open(out / "measured.csv")))
    variants = ["tp-baseline", "gather-all", "dchag-L", "dchag-L tree[2]", "dchag-C", "dchag-C tree[2]"]
    assert [(r["channels"], r["variant"]) for r in rows] == [(c, v) for c in ("8", "16") for v in variants]
    assert all(float(r["peak_mib"]) > 0 and float(r["samples_per_s"]) > 0 for r in rows)
    assert {r["variant"]: float(r["peak_mib_vs_tp"]) for r in rows if r["channels"] == "8"}["tp-baseline"] == 1.0
    text = (out / "report.md").read_text()
    for v in variants:
        assert f"| 16 | {v} |" in text
    for section in ("## 1. Measured on this machine", "### Projection check", "### The trained variants' own runs",
                    "## 2. Projected to the authors' scale", "snakemake report_paper", "## 3. Throughput model"):
        assert section in text
    for name in VARIANTS:
        assert f"| {name} |" in text
    assert {p.name for p in (out / "plots").glob("*.png")} == {"measured_ratios.png", "measured_by_kind.png"}
    client, runs = _runs(wd)
    run = next(r for r in runs if r.data.tags.get("rule") == "report")
    assert "peak_vs_tp.dchag-L.16ch" in run.data.metrics and run.data.metrics["wall_s"] > 0
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"report.md", "measured.csv", "plots"}


def test_secret_never_written(workflow_run):
    wd, proc = workflow_run
    assert SECRET not in proc.stdout + proc.stderr
    for path in wd.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_rerun_one_stage(workflow_run):
    wd, _ = workflow_run
    before = (wd / "results/era5/regridded/pressure/2010.nc").stat().st_mtime_ns
    proc = snakemake(wd, "-R", "era5_assemble", "--until", "era5_assemble")
    assert "era5_regrid" not in proc.stderr.split("Job stats")[1].split("Select jobs")[0]
    assert (wd / "results/era5/regridded/pressure/2010.nc").stat().st_mtime_ns == before
    _, runs = _runs(wd)
    parents = [r for r in runs if r.data.tags.get("kind") == "workflow"]
    assert len(parents) == 2
    latest = max(parents, key=lambda r: r.info.start_time).info.run_id
    assert [r.data.tags["rule"] for r in runs if r.data.tags.get("mlflow.parentRunId") == latest] == ["era5_assemble"]


def test_rerun_evaluation_alone(workflow_run):
    """One variant's evaluation forced again: it and the scorecard rerun, no training, no other variant."""
    wd, _ = workflow_run
    checkpoint = (wd / "results/train/forecast-dchag-L/final/meta.json").stat().st_mtime_ns
    card = (wd / "results/evaluation/scorecard.md").stat().st_mtime_ns
    other = (wd / "results/evaluation/mae-dchag-L/metrics.csv").stat().st_mtime_ns
    proc = snakemake(wd, "-R", "results/evaluation/forecast-dchag-L/metrics.csv", "--until", "scorecard")
    stats = proc.stderr.split("Job stats")[1].split("Select jobs")[0].split()
    assert stats[stats.index("evaluate") + 1] == "1" and "scorecard" in stats
    assert not any(s.startswith(("train", "era5", "hs_")) for s in stats), stats
    assert (wd / "results/train/forecast-dchag-L/final/meta.json").stat().st_mtime_ns == checkpoint
    assert (wd / "results/evaluation/mae-dchag-L/metrics.csv").stat().st_mtime_ns == other
    assert (wd / "results/evaluation/scorecard.md").stat().st_mtime_ns > card


def test_bad_config_fails_clearly(tmp_path):
    bad = dict(TINY, era5=dict(TINY["era5"], years={"train": [2010], "val": [2010], "test": [2012]}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "2010 is in both train and val" in proc.stdout + proc.stderr


def test_files_source_reads_the_users_files_in_place(tmp_path):
    """era5.source files: the user's NetCDF files are the regrid jobs' inputs (no copies, no
    acquire jobs); a pattern matching nothing is reported as a missing input by its path.
    hyperspectral.source files given by their headers: the data files are inputs too."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cubes = []
    for i in range(3):
        for role in ("", "_white", "_dark"):
            (mirror / f"img{i}{role}.hdr").touch()
            (mirror / f"img{i}{role}.raw").touch()
        cubes.append({"name": f"img{i}", "raw": f"{mirror}/img{i}.hdr", "white": f"{mirror}/img{i}_white.hdr",
                      "dark": f"{mirror}/img{i}_dark.hdr"})
    for year in (2010, 2011, 2012):
        for month in ("01", "02"):
            for group in ("pl", "sl"):
                (mirror / str(year)).mkdir(parents=True, exist_ok=True)
                (mirror / str(year) / f"era5_{group}_{year}_{month}.nc").touch()
    files = {"pressure": f"{mirror}/{{year}}/era5_pl_*.nc", "single": f"{mirror}/{{year}}/era5_sl_*.nc",
             "static": f"{mirror}/static/*.nc"}
    cfg = dict(TINY, era5=dict(TINY["era5"], source="files", files=files),
               hyperspectral=dict(TINY["hyperspectral"], source="files", files=cubes))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--until", "era5_assemble", check=False)
    assert proc.returncode != 0
    assert f"{mirror}/static/*.nc" in proc.stdout + proc.stderr
    (mirror / "static").mkdir()
    (mirror / "static" / "era5_static.nc").touch()
    proc = snakemake(tmp_path, "-n", "-p", "--until", "era5_assemble", "hs_tiles")
    assert "rule era5_acquire:" not in proc.stdout and proc.stdout.count("rule era5_regrid:") == 7
    assert f"--input {mirror}/2011/era5_pl_2011_01.nc {mirror}/2011/era5_pl_2011_02.nc " in proc.stdout
    hs_inputs = [line for line in proc.stdout.splitlines() if line.strip().startswith(f"input: {mirror}/img1")]
    assert len(hs_inputs) == 1 and f"{mirror}/img1.raw" in hs_inputs[0] and f"{mirror}/img1_dark.raw" in hs_inputs[0]


@pytest.mark.parametrize("profile", ["slurm", "frontier"])
def test_cluster_profiles_dry_run_from_repo_root(profile, tmp_path):
    env = local_env(DCHAG_SLURM_ACCOUNT="abc123", DCHAG_SLURM_PARTITION="cpu")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", profile, "-n",
                           "--forceall"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "slurm_account=abc123" in out
    assert "rule era5_acquire:" in out and "rule era5_regrid:" in out
    assert "rule train:" in out and "--kill-on-bad-exit=1" in out and "torch.distributed.run" not in out
    if profile == "frontier":
        assert "slurm_partition=batch" in out and "constraint=nvme" in out and "cpus_per_task=56" in out
    else:
        assert "slurm_partition=cpu" in out


def _frontier_dry_run(tmp_path):
    cfg = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    cfg["train"].update(nproc=8)  # one full node: 8 GCDs (tp 2 x dp 4)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = local_env(DCHAG_SLURM_ACCOUNT="abc123")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "frontier", "-n", "--forceall",
                           "-s", str(REPO_ROOT / "Snakefile"), "-d", str(tmp_path)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _jobs(out: str, rule: str) -> list[tuple[dict, str]]:
    """(resources, shell command) of every job of `rule` in a dry run's output."""
    found = []
    for block in out.split(f"\nrule {rule}:")[1:]:
        lines = block.split("\n\n")[0].splitlines()
        res = next(ln for ln in lines if ln.strip().startswith("resources:")).split("resources:", 1)[1]
        resources = {}
        for item in res.split(", "):
            key, _, value = item.strip().partition("=")
            resources[key] = int(value) if value.isdigit() else value
        shell = next(ln for ln in lines if ln.startswith("Shell command:")).split(":", 1)[1].strip()
        found.append((resources, shell))
    return found


def test_frontier_dry_run_sbatch_and_srun_lines(tmp_path):
    """The sbatch line the Slurm plugin builds from the train job's resources, and the srun line."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    out = _frontier_dry_run(tmp_path)
    for rule in ("train", "evaluate"):
        for resources, shell in _jobs(out, rule):
            job = SimpleNamespace(resources=SimpleNamespace(**resources, get=resources.get), threads=7)
            sbatch = get_submit_command(job, {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": rule,
                                              "account": f"-A {resources['slurm_account']}",
                                              "partition": f"-p {resources['slurm_partition']}", "workdir": None})
            print(f"{rule}: {sbatch}\n{rule}: {shell.split(' --config')[0]}")
            assert "-A abc123 -p batch" in sbatch and "-C nvme" in sbatch and "--nodes=1" in sbatch
            assert "--ntasks=8" in sbatch and "--cpus-per-task=7" in sbatch
            # the modules, each checked, then the rendezvous flag for hpc_env and the GPU-bound srun
            assert shell.startswith(f"( source {REPO_ROOT}/workflow/scripts/hpc_modules.sh PrgEnv-gnu/8.7.0 "
                                    "cpe/26.03 rocm/7.2.0 craype-accel-amd-gfx90a miniforge3/23.11.0-0 "
                                    "rccl-net-plugin && DCHAG_RDZV_GET_DISABLED=1 OMP_NUM_THREADS=7 MKL_NUM_THREADS=7 "
                                    "OPENBLAS_NUM_THREADS=7 srun --gpus-per-task=1 --gpu-bind=closest "
                                    "--network=disable_rdzv_get -N 1 -n 8 -c 7 --kill-on-bad-exit=1 ")
            assert "--network=disable_rdzv_get" in sbatch.split()
            if rule == "train":
                assert "-t 120" in sbatch and "--signal=USR1@300" in sbatch
    assert "slurm_partition=batch" in out and "cpus_per_task=56" in out
    # every job fits Frontier's batch bins (1-91 nodes: 120 min); groups are judged by the submission test
    for rule in ("era5_assemble", "hs_tiles", "train", "evaluate", "evaluate_mae", "evaluate_baselines", "report",
                 "scorecard"):
        for resources, _ in _jobs(out, rule):
            assert resources["runtime"] <= 120 and resources.get("nodes", 1) <= 91, (rule, resources)


def test_a_dry_run_with_another_config_leaves_live_jobs_config_alone(workflow_run):
    wd, _ = workflow_run
    before = {p.name: p.read_text() for p in (wd / "results/config").glob("effective-*.yaml")}
    assert len(before) == 1
    proc = snakemake(wd, "-n", "--config", "train={steps: 7}")
    assert proc.returncode == 0
    after = {p.name: p.read_text() for p in (wd / "results/config").glob("effective-*.yaml")}
    assert {k: after[k] for k in before} == before  # the file running jobs read is untouched
    (new,) = set(after) - set(before)
    assert yaml.safe_load(after[new])["train"]["steps"] == 7


def test_a_configfile_replaces_config_yaml_and_is_what_dchag_config_shows(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO_ROOT / "config.yaml").read_text())  # bands.bin 5, four variants
    mine = {"run_name": "mine", "era5": dict(TINY["era5"], channels=["z_500", "t_850", "t2m", "lsm"]),
            "train": {"steps": 7}}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(mine))
    snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "my.yaml"))
    (effective,) = (tmp_path / "results/config").glob("effective-*.yaml")
    shown = subprocess.run([sys.executable, "-m", "pipeline_src.cli", "config", "--config", str(tmp_path / "my.yaml")],
                           capture_output=True, text=True, check=True, env=local_env())
    ran = yaml.safe_load(effective.read_text())
    assert ran == yaml.safe_load(shown.stdout)
    assert ran["hyperspectral"]["bands"]["bin"] == 1 and len(ran["train"]["variants"]) == 3  # schema defaults
    assert ran["forecast"]["targets"] == ["z_500", "t_850", "t2m"] and ran["train"]["steps"] == 7
