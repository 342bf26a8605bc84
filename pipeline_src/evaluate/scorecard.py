"""The scorecard: every forecaster and the baselines side by side, differences with error bars.

Differences in RMSE (WB2 convention) come with a paired circular block bootstrap over the
initialisation times: both systems are resampled on the same times, in blocks long enough
to span the anomalies' memory, so a "no difference" is a statement with a confidence
interval. Every table names its convention.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..config import BASELINES
from ..io import InputError, atomic_path
from ..model.mae_objective import TRIVIAL
from .metrics import CONVENTIONS, block_bootstrap_indices, decorrelation_lag, holm, paired_rmse_difference
from .scoring import table_rows

CSV_FIELDS = ("variant", "variable", "units", "lead_hours", "metric", "convention", "value", "low", "high", "p_value",
              "block_days", "holm", "n_inits")


def check_same_inits(systems: dict[str, xr.Dataset]) -> np.ndarray:
    """The common initialisation times; InputError if two systems were scored on different ones."""
    names = list(systems)
    ref = systems[names[0]]
    for name in names[1:]:
        ds = systems[name]
        same = (ds.sizes["init_time"] == ref.sizes["init_time"]
                and (ds["init_time"].values == ref["init_time"].values).all()
                and list(ds["lead_hours"].values) == list(ref["lead_hours"].values)
                and list(ds["variable"].values) == list(ref["variable"].values))
        if not same:
            raise InputError(None, f"{name} and {names[0]} were scored on different initialisation times, "
                                   f"leads or variables: rerun `snakemake -R evaluate evaluate_baselines`")
    return ref["init_time"].values


def init_spacing_days(init_times: np.ndarray) -> float:
    """Days between consecutive initialisation times (the median spacing)."""
    if len(init_times) < 2:
        return 1.0
    return float(np.median(np.diff(init_times)) / np.timedelta64(1, "D"))


def block_lengths(systems: dict[str, xr.Dataset], pairs: list[tuple[str, str]], boot: dict) -> dict[int, int]:
    """Initialisation times per bootstrap block, per lead (hours). block_days "auto": the longest lag
    at which the paired per-init MSE differences of any pair and variable at that lead still
    correlate at 0.1 or more, and at least the lead itself; a number: that many days at every lead."""
    ref = systems[pairs[0][0]] if pairs else next(iter(systems.values()))
    times = ref["init_time"].values
    spacing, n = init_spacing_days(times), len(times)
    out = {}
    for li, lead in enumerate(int(h) for h in ref["lead_hours"].values):
        if boot["block_days"] != "auto":
            out[lead] = max(1, math.ceil(float(boot["block_days"]) / spacing))
            continue
        lags = [decorrelation_lag(systems[a]["mse"].values[:, li, vi] - systems[b]["mse"].values[:, li, vi])
                for a, b in pairs for vi in range(ref.sizes["variable"])]
        out[lead] = min(n, max([math.ceil(lead / 24 / spacing), *lags]))
    return out


def differences(systems: dict[str, xr.Dataset], pairs: list[tuple[str, str]], boot: dict) -> list[dict]:
    """RMSE(a) - RMSE(b) with a paired block-bootstrap interval, per pair, variable and lead; blocks
    per lead (block_lengths), and Holm's correction over every row for the verdicts."""
    init_times = check_same_inits(systems)
    spacing = init_spacing_days(init_times)
    blocks = block_lengths(systems, pairs, boot)
    rows = []
    for a, b in pairs:
        for li, lead in enumerate(int(h) for h in systems[a]["lead_hours"].values):
            block = blocks[lead]
            idx = block_bootstrap_indices(len(init_times), boot["samples"], block, boot["seed"])
            # (init, variable) -> (variable, init)
            ma = systems[a]["mse"].isel(lead_hours=li).transpose("variable", "init_time").values
            mb = systems[b]["mse"].isel(lead_hours=li).transpose("variable", "init_time").values
            d = paired_rmse_difference(ma, mb, idx, boot["level"])
            ds = systems[a]
            for vi, var in enumerate(ds["variable"].values):
                rows.append({"variant": a, "variable": str(var), "units": str(ds["units"].values[vi]),
                             "lead_hours": lead, "metric": f"rmse_minus_{b}",
                             "convention": f"wb2 rmse difference; {boot['level']:.0%} paired circular block "
                                           f"bootstrap over inits ({boot['samples']} samples, blocks of {block} "
                                           f"inits = {block * spacing:g} days at this lead); verdict Holm-corrected "
                                           f"over the table",
                             "value": float(d["diff"][vi]), "low": float(d["low"][vi]), "high": float(d["high"][vi]),
                             "p_value": float(d["p"][vi]), "block_days": block * spacing, "level": boot["level"],
                             "n_inits": len(init_times)})
    for row, rejected in zip(rows, holm([r["p_value"] for r in rows], 1 - boot["level"])):
        row["holm"] = rejected
    return rows


def comparison_pairs(models: dict[str, str]) -> list[tuple[str, str]]:
    """Each model vs both baselines; each D-CHAG model vs the first TP-only model (else the first model)."""
    pairs = [(m, b) for m in models for b in BASELINES]
    reference = next((m for m, arch in models.items() if arch == "tp-baseline"), next(iter(models), None))
    pairs += [(m, reference) for m in models if m != reference]
    return pairs


def verdict(row: dict) -> str:
    """'better', 'worse' or 'no significant difference' from a difference row's interval, and where
    the row carries Holm's decision (differences()), only when the family-wise test agrees."""
    if not row.get("holm", True):
        return "no significant difference"
    if row["high"] < 0:
        return "better"
    if row["low"] > 0:
        return "worse"
    return "no significant difference"


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "nan"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def markdown(rows: list[dict], diffs: list[dict], meta: dict, mae: dict[str, dict]) -> str:
    """The scorecard as Markdown: headline RMSE, per-variable tables, differences, MAE metrics."""
    df = pd.DataFrame(rows)
    lines = [f"# Scorecard: {meta['run_name']}", "",
             f"Verification on the **{meta['split']}** split, {meta['n_inits']} initialisation times "
             f"({meta['first_init']} to {meta['last_init']}, every {meta['init_stride']}th), "
             f"leads {', '.join(f'{h / 24:g} d' for h in meta['lead_hours'])}. Physical units.", "",
             f"Conventions: {CONVENTIONS}", ""]
    if meta.get("note"):
        lines[2:2] = [f"**{meta['note']}**", ""]
    if not df.empty:
        systems = list(dict.fromkeys(df["variant"]))
        head = df[df.metric == "rmse"]
        cols = [(v, h) for v in dict.fromkeys(head["variable"]) for h in sorted(set(head["lead_hours"]))]
        lines += ["## RMSE (WeatherBench2: sqrt of the mean area-weighted MSE over inits)", "",
                  "| system | " + " | ".join(f"{v} {h / 24:g}d" for v, h in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for s in systems:
            vals = {(r.variable, r.lead_hours): r.value for r in head[head.variant == s].itertuples()}
            lines.append(f"| {s} | " + " | ".join(_fmt(vals.get(c, float("nan"))) for c in cols) + " |")
        lines.append("")
        for var in dict.fromkeys(df["variable"]):
            sub = df[df.variable == var]
            unit = sub["units"].iloc[0]
            lines += [f"## {var} [{unit}]", "",
                      "| lead | system | RMSE (WB2) | RMSE (ClimaX, per-init mean) | ACC (WB2) | bias | Pearson "
                      "| activity |",
                      "|---|---|---|---|---|---|---|---|"]
            for h in sorted(set(sub["lead_hours"])):
                for s in systems:
                    m = {r.metric: r.value for r in sub[(sub.lead_hours == h) & (sub.variant == s)].itertuples()}
                    lines.append(f"| {h / 24:g} d | {s} | " + " | ".join(
                        _fmt(m.get(k, float("nan"))) for k in ("rmse", "rmse_climax", "acc", "bias", "pearson", "activity")) + " |")
            lines.append("")
    if diffs:
        alpha = 1 - diffs[0]["level"]  # the chance of excluding zero when there is no difference
        raw = sum(d["high"] < 0 or d["low"] > 0 for d in diffs)
        blocks = {d["lead_hours"]: d["block_days"] for d in diffs}
        lines += ["## RMSE differences with confidence intervals", "",
                  "RMSE(system) - RMSE(other), WB2 convention; paired circular block bootstrap over the "
                  "initialisation times, blocks as long as the paired differences stay correlated (lag where "
                  "their autocorrelation falls below 0.1, at least the lead): "
                  + ", ".join(f"{h / 24:g} d: {b:g} days" for h, b in sorted(blocks.items()))
                  + ". Negative = the system is better.", "",
                  f"{len(diffs)} intervals at {1 - alpha:.0%}: with no real differences about "
                  f"{alpha * len(diffs):.1f} of them would exclude zero by chance. {raw} do; the verdicts are "
                  f"Holm-corrected over all {len(diffs)} (family-wise error {alpha:.0%}), so a verdict other than "
                  "'no significant difference' is unlikely to be chance.", "",
                  "| system | minus | variable | lead | block | difference | interval | p | verdict (Holm) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in diffs:
            lines.append(f"| {d['variant']} | {d['metric'][len('rmse_minus_'):]} | {d['variable']} | "
                         f"{d['lead_hours'] / 24:g} d | {d['block_days']:g} d | {_fmt(d['value'])} | "
                         f"[{_fmt(d['low'])}, {_fmt(d['high'])}] | {d['p_value']:.3f} | {verdict(d)} |")
        lines.append("")
    if mae:
        lines += ["## Masked autoencoders (plant pixels of masked patches, evaluation masks shared by all variants)", "",
                  "Beside each model, the trivial predictors on the same pixels: *zero* predicts the training "
                  "band mean, *visible mean* the mean spectrum of the tile's visible plant pixels. "
                  "`vs best` = the masked MSE over the better of these two (below 1: it beats both). "
                  "*Local mean*, a stronger bar, predicts each pixel from the visible plant pixels within "
                  "2 patches of it: a model below it does more than interpolate between neighbours.", "",
                  "| variant | split | tiles x masks | predictor | masked MSE (normalised) | vs best | "
                  "MSE (reflectance) | PSNR (dB, peak 1) | SAM (deg) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, res in mae.items():
            for split, m in sorted(res["splits"].items(), key=lambda kv: ("val", "test").index(kv[0])):
                best = min((m[f"masked_mse_{r}"] for r in TRIVIAL if f"masked_mse_{r}" in m),
                           default=None)
                for label, suffix in (("model", ""), ("zero", "_ref_zero"), ("visible mean", "_ref_visible_mean"),
                                      ("local mean", "_ref_local_mean")):
                    if f"masked_mse{suffix}" not in m:
                        continue
                    ratio = m[f"masked_mse{suffix}"] / best if best else float("nan")
                    lines.append(f"| {name} | {split} | {m['tiles']} x {m.get('mask_draws', 1)} | {label} | "
                                 f"{_fmt(m[f'masked_mse{suffix}'])} | "
                                 f"{ratio:.2f} | {_fmt(m[f'mse_reflectance{suffix}'])} | {m[f'psnr{suffix}']:.2f} | "
                                 f"{m[f'sam_deg{suffix}']:.2f} |")
        lines.append("")
    probed = {name: res["probe"] for name, res in mae.items() if res.get("probe")}
    if probed:
        lines += probe_table(probed)
    return "\n".join(lines)


def probe_table(probed: dict[str, dict]) -> list[str]:
    """The leaf-trait probe: test R2 (and NRMSE) per trait and feature set, the MAEs side by side."""
    names = list(probed)
    first = next(iter(probed.values()))
    lines = ["## Leaf-trait probe (ridge regression on frozen features, test plants)", "",
             "Per patch with plant pixels, the mean of its pixels' chlorophyll (cab), water (cw) and dry "
             "matter (cm), fitted on the training tiles and scored on the test tiles from: the pretrained "
             "encoder's token of the patch, the same architecture freshly initialised, and the patch's mean "
             f"spectrum. {first['patches']['train']} training patches of {first['plants']['train']} plants, "
             f"{first['patches']['test']} test patches of {first['plants']['test']} other plants; the ridge penalty "
             "is cross-validated over the training plants. "
             "Cells: R2 (NRMSE = RMSE / test standard deviation); R2 0 is the test plants' own mean, "
             "*training mean* the constant a probe must beat.", "",
             "| trait | features | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for trait in first["traits"]:
        for features in first["scores"][trait]:  # pretrained, random, spectrum, training mean
            cells = [probed[n]["scores"][trait][features] for n in names]
            lines.append(f"| {trait} | {features} | " + " | ".join(f"{c['r2']:.3f} ({c['nrmse']:.3f})" for c in cells)
                         + " |")
    return lines + [""]


def system_rows(systems: dict[str, xr.Dataset]) -> list[dict]:
    """Aggregate metric rows of every system, with empty interval columns."""
    rows = []
    for ds in systems.values():
        rows += [{**r, "low": "", "high": ""} for r in table_rows(ds)]
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Scorecard rows (metrics and differences) as CSV, atomically."""
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(CSV_FIELDS)).to_csv(tmp, index=False, float_format="%.6g")
