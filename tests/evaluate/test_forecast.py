"""Forecast evaluation: the same metrics at any evaluation mesh, physical units, baselines, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

from pipeline_src.datasets.era5 import Climatology, ERA5Split
from pipeline_src.evaluate.damping import coefficient_array, fit_damping
from pipeline_src.evaluate.forecast import ForecastEval, VerificationData, baseline_scores, check_compatible
from pipeline_src.evaluate.metrics import PER_INIT, aggregate, cell_area_weights
from pipeline_src.io import InputError
from pipeline_src.parallel import checkpoint as ckpt
from pipeline_src.parallel.spawn import run_local
from pipeline_src.train.restore import load_trained
from tests.parallel import workers as train_workers

from . import workers

TARGETS = ["z_500", "t2m"]
LEADS = [1.0, 3.0]


@pytest.fixture(scope="module")
def tp2_checkpoint(assembled_era5, tmp_path_factory):
    """A D-CHAG forecaster trained for a few steps at TP 2 on the small assembled ERA5."""
    _, out, _, _ = assembled_era5
    data = {"assembled": str(out), "targets": TARGETS, "lead_days": LEADS, "space": "anomaly"}
    job = train_workers.train_job(tmp_path_factory.mktemp("ck"), "fc", task="forecast", arch="dchag-L", tp=2,
                                  steps=4, partitions=2, data=data)
    run_local(train_workers.train, 2, job)
    return out, job.final_dir


def _evaluate(out, final, tmp_path, world, tp, dp="auto"):
    job = ForecastEval(final, out, LEADS, init_stride=29, batch=3, tp=tp, dp=dp)
    path = tmp_path / f"per_init_w{world}_tp{tp}.nc"
    run_local(workers.evaluate_forecast, world, job, str(path))
    with xr.open_dataset(path) as ds:
        return ds.load()


@pytest.mark.timeout(300)
def test_same_metrics_on_one_process_and_two_ranks(tp2_checkpoint, tmp_path):
    out, final = tp2_checkpoint
    assert ckpt.read_meta(final)["mesh"]["tp"] == 2
    single = _evaluate(out, final, tmp_path, 1, 1)
    tp2 = _evaluate(out, final, tmp_path, 2, 2)
    dp2 = _evaluate(out, final, tmp_path, 2, 1)  # data-parallel: each rank forecasts half the inits
    n_inits = len(range(0, 366 - 3, 29))
    for ds in (single, tp2, dp2):
        assert ds.sizes == {"init_time": n_inits, "lead_hours": 2, "variable": 2}
        np.testing.assert_array_equal(ds["init_time"].values, single["init_time"].values)
        for k in PER_INIT:
            np.testing.assert_allclose(ds[k].values, single[k].values, rtol=1e-5, atol=1e-6, err_msg=k)
    assert list(single["lead_hours"].values) == [24, 72]
    assert list(single["units"].values) == ["m2 s-2", "K"]


@pytest.mark.timeout(300)
def test_forecasts_are_in_physical_units(tp2_checkpoint, tmp_path):
    """Rebuild the first init's forecast by hand from the checkpoint, the climatology and the stats."""
    out, final = tp2_checkpoint
    ds = _evaluate(out, final, tmp_path, 1, 1)
    model, meta = load_trained(final)
    split = ERA5Split(out / "test.zarr")
    clim = Climatology(out / "climatology.zarr", split)
    stats = json.loads((out / "normalization.json").read_text())
    static = [c in stats["static_channels"] for c in split.channels]
    x, cx = split.read([0]), clim.at(split.times[[0]])
    mean, std, astd = (np.array(stats[k])[:, None, None] for k in ("mean", "std", "anomaly_std"))
    inputs = np.where(np.array(static)[:, None, None], (x - mean) / std, (x - cx) / np.maximum(astd, 1e-12))
    with torch.no_grad():
        pred = model(torch.from_numpy(inputs.astype(np.float32)), torch.tensor([3.0])).numpy()[0]
    idx = [split.channels.index(t) for t in TARGETS]
    truth, cv = split.read([3])[0, idx], clim.at(split.times[[3]])[0, idx]
    forecast = cv + pred * astd[idx]
    w = cell_area_weights(split.latitudes)[:, None]
    for v in range(2):
        mse = float(((forecast[v] - truth[v]) ** 2 * w).mean())
        assert ds["mse"].values[0, 1, v] == pytest.approx(mse, rel=1e-4)
    split.close()
    clim.close()


def test_baselines_and_persistence_losing_skill(assembled_era5):
    _, out, _, _ = assembled_era5
    leads, targets = [1.0, 3.0, 10.0, 30.0], ["z_500", "t_850"]
    # fitted on the validation year: its anomalies are out of sample for the climatology, as the
    # test year's are (the single training year's own anomalies are partly in its climatology)
    val = VerificationData(out, "val")
    fit = fit_damping(val, leads, targets, stride=1)
    val.close()
    data = VerificationData(out)
    scores = baseline_scores(data, leads, 7, targets, coefficient_array(fit, targets, leads))
    clim, pers, damped = (aggregate({k: np.stack(v) for k, v in scores[name].per.items()}, axis=0)
                          for name in ("climatology", "persistence", "damped_persistence"))
    np.testing.assert_array_equal(clim["acc"], 0.0)
    acc = pers["acc"][:, 0]  # z_500 over leads
    assert acc[0] > 0.7 and acc[0] > acc[1] > acc[2] > acc[3] and acc[3] < acc[0] - 0.3
    assert (pers["rmse"][3] > clim["rmse"][3]).all()  # at 30 days persistence is worse than climatology
    # fitted on another year, the damping stays within 5% of the better end at every lead, beats
    # climatology where anomalies persist (1 and 3 d) and persistence where they no longer do (10
    # and 30 d); there its alpha is near 0 and it is climatology to within sampling (0.5%)
    assert (damped["rmse"] <= 1.05 * np.minimum(clim["rmse"], pers["rmse"])).all()
    assert (damped["rmse"][:2] < clim["rmse"][:2]).all() and (damped["rmse"][2:] < pers["rmse"][2:]).all()
    assert (damped["rmse"][2:] < 1.005 * clim["rmse"][2:]).all()
    assert (damped["acc"][0] > 0.5).all() and (damped["acc"][0] > damped["acc"][3]).all()
    data.close()


def test_damping_is_the_least_squares_shrink_of_the_training_anomalies(assembled_era5):
    """alpha recomputed here from the split and climatology readers with numpy alone."""
    from pipeline_src.datasets.era5 import Climatology, ERA5Split
    from pipeline_src.evaluate.metrics import cell_area_weights

    _, out, _, _ = assembled_era5
    train = VerificationData(out, "train")
    fit = fit_damping(train, [1.0, 10.0], ["t_850"], stride=1)
    train.close()
    split = ERA5Split(out / "train.zarr")
    clim = Climatology(out / "climatology.zarr", split)
    c = split.channels.index("t_850")
    anomaly = split.read(range(len(split.times)))[:, c] - clim.at(split.times)[:, c]
    w = cell_area_weights(split.latitudes)[None, :, None]
    n = len(split.times) - 10  # the same initialisation times at every lead: those that reach 10 days
    for li, steps in enumerate((1, 10)):  # one step per day
        a0, a_lead = anomaly[:n].astype(np.float64), anomaly[steps:n + steps].astype(np.float64)
        alpha = (w * a0 * a_lead).sum() / (w * a0 * a0).sum()
        assert fit["coefficients"]["t_850"][li] == pytest.approx(alpha, rel=1e-9)
    # (one training year: its climatology holds its own slow anomalies, so at 10 days the fit is near 0)
    assert fit["coefficients"]["t_850"][1] < fit["coefficients"]["t_850"][0] < 1 and fit["coefficients"]["t_850"][0] > 0
    assert fit["n_inits"] == len(split.times) - 10 and fit["fitted_on"] == "train"
    split.close()
    clim.close()


def test_checkpoint_that_does_not_fit_the_data(tp2_checkpoint, tmp_path):
    out, final = tp2_checkpoint
    data = VerificationData(out)
    meta = ckpt.read_meta(final)
    spec, transform = check_compatible(final, meta, data)
    assert list(transform.targets) == TARGETS
    other = json.loads(json.dumps(meta))
    other["transform"]["channels"] = other["transform"]["channels"][::-1]
    with pytest.raises(InputError, match=r"final: checkpoint was trained on channels \['orography'"):
        check_compatible(final, other, data)
    other = json.loads(json.dumps(meta))
    other["spec"]["image"] = [16, 32]
    with pytest.raises(InputError, match="trained on a 16x32 grid; .*test.zarr is 32x64"):
        check_compatible(final, other, data)
    other = json.loads(json.dumps(meta))
    other["spec"]["task"], other["task"] = "mae", "mae"
    with pytest.raises(InputError, match="not a forecast checkpoint"):
        check_compatible(final, other, data)
    with pytest.raises(InputError, match=r"test.zarr: lead time 400 days is longer than the split"):
        data.init_indices([7.0, 400.0], 5)
    inits, steps = data.init_indices([1.0, 3.0], 5)
    assert steps == [1, 3] and inits == list(range(0, 363, 5))
    data.close()


def test_missing_climatology_is_named(assembled_era5, tmp_path):
    _, out, _, _ = assembled_era5
    copy = tmp_path / "assembled"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("climatology.zarr"))
    with pytest.raises(InputError, match="climatology.zarr: climatology not found"):
        VerificationData(copy)


def test_cli_names_a_missing_checkpoint_in_one_line(assembled_era5, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    from pipeline_src.parallel.spawn import free_port
    from tests.conftest import SMALL

    _, out, _, _ = assembled_era5
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}

    def evaluate(evaluate_cfg):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({**SMALL, "evaluate": evaluate_cfg}))
        env["MASTER_PORT"] = str(free_port())
        return subprocess.run([sys.executable, "-m", "pipeline_src.cli", "evaluate", "variant", "--config",
                               str(tmp_path / "config.yaml"), "--variant", "forecast-dchag-L", "--checkpoint",
                               str(tmp_path / "nothing"), "--assembled", str(out), "--output-dir",
                               str(tmp_path / "ev")], capture_output=True, text=True, timeout=120, env=env)

    proc = evaluate({"mesh": {"tp": 1}, "nproc": 1})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {tmp_path / 'nothing'}: not a complete checkpoint" in proc.stderr
    proc = evaluate({"nproc": 1})  # the training mesh (tp 2) on one process: refused by the config check
    assert proc.returncode == 2
    assert "evaluate.nproc 1 is not a product of the evaluation mesh {'tp': 2" in proc.stderr
    proc = evaluate({})  # evaluate.nproc = train.nproc = 2, started as one plain process
    assert proc.returncode == 2
    assert "error: evaluate.nproc: configured for 2 ranks, launched with 1: no launcher variables" in proc.stderr
    assert not (tmp_path / "ev" / "metrics.csv").exists()


@pytest.mark.timeout(300)
def test_forecasts_exported_in_weatherbench2_layout_give_the_scorecard_rmse(tp2_checkpoint, tmp_path):
    """forecast.zarr / truth.zarr as WB2's evaluate.py reads them (field notes, Metrics); the RMSE
    recomputed from these files alone, with WB2's cell-area weights, equals the evaluation's."""
    out, final = tp2_checkpoint
    job = ForecastEval(final, out, LEADS, init_stride=29, batch=3, tp=1, dp="auto")
    run_local(workers.evaluate_forecast, 2, job, str(tmp_path / "per_init.nc"), str(tmp_path / "wb2"))
    with xr.open_zarr(tmp_path / "wb2/forecast.zarr") as fc, xr.open_zarr(tmp_path / "wb2/truth.zarr") as obs:
        fc, obs = fc.load(), obs.load()
    assert set(fc.data_vars) == {"geopotential", "2m_temperature"}
    assert fc["geopotential"].dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
    assert fc["2m_temperature"].dims == ("time", "prediction_timedelta", "latitude", "longitude")
    assert list(fc["level"].values) == [500] and fc["geopotential"].attrs["units"] == "m2 s-2"
    assert list(fc["prediction_timedelta"].values) == list(np.array([24, 72], "timedelta64[h]").astype("timedelta64[ns]"))
    lat = fc["latitude"].values
    assert np.all(np.diff(lat) > 0) and fc["longitude"].min() >= 0 and fc["longitude"].max() < 360
    assert np.all(np.diff(fc["time"].values) > np.timedelta64(0))  # both ranks' inits, in order
    assert fc["2m_temperature"].mean() > 200  # kelvin, not normalised units
    # WB2's convention, from the files alone: cell-area weights (sin of the cell edges), MSE per
    # time, mean over time, square root
    edges = np.clip(np.concatenate([[-90.0], (lat[1:] + lat[:-1]) / 2, [90.0]]), -90, 90)
    w = np.diff(np.sin(np.deg2rad(edges)))
    w = (w / w.mean())[:, None]
    with xr.open_dataset(tmp_path / "per_init.nc") as per:
        per = per.load()
    for name, channel in (("geopotential", "z_500"), ("2m_temperature", "t2m")):
        f = fc[name].sel(level=500) if name == "geopotential" else fc[name]
        o = obs[name].sel(level=500) if name == "geopotential" else obs[name]
        for li, lead in enumerate(f["prediction_timedelta"].values):
            valid = f["time"].values + lead
            err = f.isel(prediction_timedelta=li).values - o.sel(time=valid).values
            rmse = np.sqrt(((err ** 2) * w).mean(axis=(1, 2)).mean())
            expected = aggregate({k: per[k].sel(variable=channel).values[:, li] for k in PER_INIT},
                                 axis=0)["rmse"]
            np.testing.assert_allclose(rmse, expected, rtol=1e-5, err_msg=f"{name} at {lead}")
