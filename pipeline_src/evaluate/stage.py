"""The evaluation stage's jobs: evaluate a forecaster or an MAE, the baselines, and the scorecard.

Each job writes under results/evaluation/<system>/: metrics.csv, summary.json, data/
(per_init.nc, error_maps.nc) and plots/; rank 0 writes and logs an MLflow child run.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import xarray as xr

from .. import tracking
from ..config import Config, job_layout
from ..io import InputError, atomic_path, read_json, write_json
from ..parallel.hpc_env import report_communication
from ..parallel.mesh import is_main
from . import plots, wb2
from .damping import coefficient_array, fit_damping
from .forecast import ForecastEval, VerificationData, baseline_scores, run_forecast_eval
from .mae import MaeEval, run_mae_eval
from ..model.mae_objective import TRIVIAL
from .metrics import CONVENTIONS
from .scoring import Scores, read_per_init, table_rows, write_csv, write_per_init

log = logging.getLogger(__name__)


def _mesh(cfg: Config) -> dict:
    return job_layout(cfg.data, "evaluate")[1]


def _nproc(cfg: Config) -> int:
    return job_layout(cfg.data, "evaluate")[0]


def _log_rows(run, rows: list[dict]) -> None:
    """MLflow metrics named metric.variable, one point per lead (step = lead hours)."""
    for r in rows:
        run.log_metrics({f"{r['metric']}.{r['variable']}": r["value"]}, step=r["lead_hours"])


def write_system(scores: Scores, example: dict | None, data: VerificationData, out_dir: Path, title: str) -> list[dict]:
    """per_init.nc, error_maps.nc, metrics.csv, summary.json and plots of one scored system."""
    out_dir = Path(out_dir)
    per = scores.to_dataset()
    write_per_init(per, out_dir / "data" / "per_init.nc")
    rmse = scores.rmse_map(data.split.latitudes, data.split.longitudes)
    with atomic_path(out_dir / "data" / "error_maps.nc") as tmp:
        rmse.to_netcdf(tmp, engine="netcdf4")
    rows = table_rows(per)
    write_csv(rows, out_dir / "metrics.csv")
    plot_dir = out_dir / "plots"
    plots.error_maps(rmse, plot_dir / "rmse_maps.png", f"{title}: RMSE per grid cell ({per.sizes['init_time']} inits)")
    if example is not None:
        for li, hours in enumerate(scores.lead_hours):
            plots.example(example, scores.variables, scores.units, li, hours, data.split.latitudes,
                          data.split.longitudes, plot_dir / f"example_{hours:04d}h.png", title)
    write_json(out_dir / "summary.json", {
        "system": scores.system, "n_inits": int(per.sizes["init_time"]),
        "first_init": str(per["init_time"].values[0])[:19], "last_init": str(per["init_time"].values[-1])[:19],
        "lead_hours": scores.lead_hours, "variables": scores.variables, "conventions": CONVENTIONS})
    return rows


def write_forecasts(forecasts, data: VerificationData, folder: Path) -> None:
    """forecast.zarr and truth.zarr in WeatherBench2's layout (evaluate/wb2.py)."""
    ds = wb2.wb2_dataset(forecasts.fields, forecasts.init_times, forecasts.targets, forecasts.units,
                         data.split.latitudes, data.split.longitudes, forecasts.lead_hours)
    ds.attrs = {"source": "D-CHAG pipeline evaluation", "conventions": "WeatherBench2 forecast layout"}
    wb2.write_wb2(ds, folder / "forecast.zarr")
    truth = wb2.truth_dataset(data, forecasts.init_times, forecasts.lead_hours, forecasts.targets, forecasts.units)
    wb2.write_wb2(truth, folder / "truth.zarr")


def evaluate_variant(cfg: Config, variant: str, checkpoint: str, assembled: str, tiles: str, out_dir: str,
                     rule: str | None) -> None:
    """All ranks: the forecaster's scorecard and WB2 export, or the masked autoencoder's held-out scores."""
    if cfg.variant(variant)["task"] == "forecast":
        evaluate_forecaster(cfg, variant, checkpoint, assembled, out_dir, rule)
    else:
        evaluate_mae(cfg, variant, checkpoint, tiles, out_dir, rule)


def evaluate_forecaster(cfg: Config, variant: str, checkpoint: str, assembled: str, out_dir: str,
                        rule: str | None) -> None:
    """All ranks: forecast the test split from the checkpoint; rank 0 writes and logs."""
    ev = cfg.data["evaluate"]
    mesh = _mesh(cfg)
    job = ForecastEval(Path(checkpoint), Path(assembled), list(cfg.data["forecast"]["lead_days"]),
                       ev["init_stride"], ev["batch"], ev["split"], mesh["tp"], mesh["fsdp"], mesh["dp"],
                       _nproc(cfg))
    params = {"variant": variant, "checkpoint": checkpoint, "split": ev["split"], "init_stride": ev["init_stride"],
              "lead_days": job.lead_days, "mesh": mesh}
    start = time.perf_counter()
    with tracking.stage_run(cfg.mlflow, "evaluate", rule, params, wildcards={"variant": variant}) as run:
        scores, example, data, forecasts = run_forecast_eval(job)
        if is_main():
            report_communication(run=run)  # versions, RCCL's network; warns on sockets across nodes
            rows = write_system(scores, example, data, Path(out_dir), variant)
            write_forecasts(forecasts, data, Path(out_dir))
            _log_rows(run, rows)
            run.set_tags({"metric_conventions": CONVENTIONS,
                          "wb2_forecast": str((Path(out_dir) / "forecast.zarr").resolve())})
            run.log_metrics({"seconds": time.perf_counter() - start, "n_inits": scores.count})
            for name in ("metrics.csv", "summary.json", "data", "plots"):
                run.log_artifact(Path(out_dir) / name, None if name.endswith((".csv", ".json")) else name)
        data.close()
    if is_main():
        log.info("%s: %d initialisation times scored in %.1f s", variant, scores.count, time.perf_counter() - start)


def evaluate_baselines(cfg: Config, assembled: str, out_root: str, rule: str | None) -> None:
    """Climatology, persistence and damped persistence (its coefficients fitted on the training
    split) on the models' initialisation times, under out_root/<baseline>/."""
    ev = cfg.data["evaluate"]
    lead_days = list(cfg.data["forecast"]["lead_days"])
    targets = list(cfg.data["forecast"]["targets"])
    params = {"split": ev["split"], "init_stride": ev["init_stride"], "lead_days": lead_days}
    with tracking.stage_run(cfg.mlflow, "evaluate", rule, params) as run:
        train = VerificationData(assembled, "train")
        fit = fit_damping(train, lead_days, targets, stride=1)
        train.close()
        data = VerificationData(assembled, ev["split"])
        scores = baseline_scores(data, lead_days, ev["init_stride"], targets,
                                 coefficient_array(fit, targets, lead_days))
        for name, sc in scores.items():
            out = Path(out_root) / name
            rows = write_system(sc, None, data, out, name)  # no example maps: trivial forecasts
            if name == "damped_persistence":
                write_json(out / "data" / "damping.json", fit)
            _log_rows(run, [{**r, "metric": f"{name}.{r['metric']}"} for r in rows])
            run.log_artifact(out, name)
        for target, alphas in fit["coefficients"].items():
            for hours, alpha in zip(scores["damped_persistence"].lead_hours, alphas):
                run.log_metrics({f"damping.{target}": alpha}, step=hours)
        run.set_tags({"metric_conventions": CONVENTIONS})
        data.close()
    log.info("damped persistence, alpha per lead (fitted on %d training inits): %s", fit["n_inits"],
             ", ".join(f"{t} {' / '.join(f'{a:.2f}' for a in v)}" for t, v in fit["coefficients"].items()))


def evaluate_mae(cfg: Config, variant: str, checkpoint: str, tiles: str, out_dir: str, rule: str | None) -> None:
    """All ranks: masked reconstruction of the val and test tiles; rank 0 writes and logs."""
    ev = cfg.data["evaluate"]
    mesh = _mesh(cfg)
    job = MaeEval(Path(checkpoint), Path(tiles), ("val", "test"), ev["batch"], ev["seed"], ev["preview_tiles"],
                  mesh["tp"], mesh["fsdp"], mesh["dp"], _nproc(cfg), draws=ev["mae_draws"])
    out = Path(out_dir)
    with tracking.stage_run(cfg.mlflow, "evaluate", rule, {"variant": variant, "checkpoint": checkpoint,
                                                             "mesh": mesh, "seed": ev["seed"],
                                                             "mae_draws": ev["mae_draws"]},
                            wildcards={"variant": variant}) as run:
        res = run_mae_eval(job)
        if not is_main():
            return
        report_communication(run=run)
        rows = [{"variant": variant, "split": split, "metric": k, "value": v}
                for split, m in res["splits"].items() for k, v in m.items()]
        probe = res.get("probe", {}).get("scores", {})
        rows += [{"variant": variant, "split": "test", "metric": f"probe_{metric}.{trait}.{features}", "value": v}
                 for trait, by_features in probe.items() for features, scores in by_features.items()
                 for metric, v in scores.items() if metric != "alpha"]
        with atomic_path(out / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["variant", "split", "metric", "value"])
                writer.writeheader()
                writer.writerows(rows)
        (out / "data").mkdir(parents=True, exist_ok=True)
        plots.mae_preview(res.pop("preview") or [], out / "plots" / "reconstruction.png",
                          f"{variant}: test tiles, {res['mask_ratio']:.0%} of patches masked")
        plots.mean_spectra(res["wavelengths"], res["mean_true"], res["mean_recon"], out / "plots" / "spectra.png",
                           f"{variant}: mean plant spectrum of the masked patches (test)")
        write_json(out / "summary.json", {"system": variant, "task": "mae", **res})
        for split, m in res["splits"].items():
            run.log_metrics({f"{split}.{k}": v for k, v in m.items()})
        run.log_metrics({r["metric"]: r["value"] for r in rows if r["metric"].startswith("probe_")})
        for name in ("metrics.csv", "summary.json", "plots"):
            run.log_artifact(out / name, None if name.endswith((".csv", ".json")) else name)


def mae_curves(train_root: str | Path, names: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Label -> (step, loss) points: each MAE's held-out curve (its training loss without one) and
    the references' curves of the first run that has them (all share the held-out tiles and masks)."""
    curves = {}
    for name in names:
        history = read_json(Path(train_root) / name / "summary.json")["history"]
        scored = [h for h in history if "heldout_loss" in h]
        if not scored:
            curves[f"{name} training"] = [(h["step"], h["loss"]) for h in history]
            continue
        curves[f"{name} held-out"] = [(h["step"], h["heldout_loss"]) for h in scored]
        for ref, label in (("heldout_ref_zero", "predict zero"), ("heldout_ref_visible_mean", "predict visible mean"),
                           ("heldout_ref_local_mean", "predict local mean")):
            if ref in scored[0]:  # runs trained before the local mean existed lack it
                curves.setdefault(label, [(h["step"], h[ref]) for h in scored])
        curves.setdefault(TARGET_LABEL, [(h["step"], 0.5 * min(h[f"heldout_{k}"] for k in TRIVIAL)) for h in scored])
    return curves


TARGET_LABEL = "target: half the better of zero and visible mean"


def make_scorecard(cfg: Config, eval_root: str, train_root: str, out_dir: str, rule: str | None) -> dict:
    """Merge every evaluated system into scorecard.md/.csv and the comparison plots."""
    from .scorecard import BASELINES, comparison_pairs, differences, markdown, system_rows, write_csv as write_card

    eval_root, out = Path(eval_root), Path(out_dir)
    variants = cfg.data["train"]["variants"]
    models = {v["name"]: v["arch"] for v in variants if v["task"] == "forecast"}
    systems: dict[str, xr.Dataset] = {}
    for name in [*models, *BASELINES]:
        path = eval_root / name / "data" / "per_init.nc"
        if not path.is_file():
            raise InputError(path, f"no evaluation of {name} (run `snakemake --until scorecard`)")
        systems[name] = read_per_init(path)
    ev = cfg.data["evaluate"]
    rows = system_rows(systems) if models else []
    diffs = differences(systems, comparison_pairs(models), ev["bootstrap"]) if models else []
    mae = {v["name"]: read_json(eval_root / v["name"] / "summary.json") for v in variants if v["task"] == "mae"}
    first = next(iter(systems.values()))
    meta = {"run_name": cfg.data["run_name"], "split": ev["split"], "n_inits": int(first.sizes["init_time"]),
            "first_init": str(first["init_time"].values[0])[:10], "last_init": str(first["init_time"].values[-1])[:10],
            "init_stride": ev["init_stride"], "lead_hours": [int(h) for h in first["lead_hours"].values],
            "note": ev["note"]}
    with tracking.stage_run(cfg.mlflow, "scorecard", rule, {"systems": list(systems), "mae": list(mae),
                                                              "bootstrap": ev["bootstrap"]}) as run:
        with atomic_path(out / "scorecard.md") as tmp:
            tmp.write_text(markdown(rows, diffs, meta, mae))
        write_card(rows + diffs, out / "scorecard.csv")
        plot_dir = out / "scorecard_plots"
        if rows:
            for metric, title in (("rmse", "RMSE (WB2)"), ("acc", "ACC (WB2)"), ("bias", "bias")):
                plots.metric_vs_lead(rows, metric, plot_dir / f"{metric}_vs_lead.png", f"{title} against lead time")
        curves = mae_curves(train_root, list(mae))
        if curves:
            plots.loss_curves(curves, plot_dir / "mae_loss.png",
                              "MAE held-out loss and trivial references", "masked plant-pixel MSE")
        plot_dir.mkdir(parents=True, exist_ok=True)
        run.set_tags({"metric_conventions": CONVENTIONS})
        _log_rows(run, [{**d, "metric": f"{d['metric']}.{d['variant']}"} for d in diffs])
        for name in ("scorecard.md", "scorecard.csv", "scorecard_plots"):
            run.log_artifact(out / name, None if "." in name else name)
    return {"systems": list(systems), "rows": len(rows), "differences": len(diffs)}
