"""The report stage: measured here, checked against the projection, the throughput model, and at paper scale.

`make_report` writes results/report/{report.md, measured.csv, measured.json, plots/} and one
MLflow child run; `make_paper` (rule report_paper, or report.paper_scale) projects the
authors' configurations and runs the planner example into results/report/paper/.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from .. import tracking
from ..config import Config
from ..io import InputError, atomic_path, read_json, write_json
from . import plots
from .measured import REPORT_VARIANTS, MeasureSettings, Variant
from .render import paper_sections, report_markdown
from .tables import measured_rows

GIB = 2**30


def measure_settings(cfg: Config) -> MeasureSettings:
    """The measured part's settings from the config's report section."""
    r = cfg.data["report"]
    tree = tuple(r["tree"])
    variants = [v for v in REPORT_VARIANTS if not v.tree]
    if tree:
        variants += [Variant("dchag-L", tree), Variant("dchag-C", tree)]
    order = {v.arch: i for i, v in enumerate(REPORT_VARIANTS)}
    variants.sort(key=lambda v: (order[v.arch], v.tree))
    return MeasureSettings(ranks=r["ranks"], channels=tuple(r["channels"]), variants=tuple(variants),
                           image=tuple(r["image"]), patch=r["patch"], dim=r["dim"], depth=r["depth"],
                           heads=r["heads"], batch=r["batch"], steps=r["steps"])


def projection_check(measured: dict, s: MeasureSettings, processes: int) -> list[dict]:
    """The fake-world projection of the measured configurations (largest channel count) beside the measured peak."""
    from .measured import model_spec
    from .projection import StepRecipe, run_many

    channels = max(s.channels)
    rows = [r for r in measured["results"] if r["channels"] == channels and not r["tree"]]
    recipe = StepRecipe(micro_batch=s.batch, precision=s.precision, activation_checkpointing=s.activation_checkpointing,
                        sequence_parallel=s.sequence_parallel)
    jobs = [("fake_step", model_spec(Variant(r["arch"]), channels, s, measured["world"]), measured["world"],
             measured["world"], 1, recipe) for r in rows]
    out = []
    for r, p in zip(rows, run_many(jobs, processes)):
        real = r["ranks"][0]["peak_bytes"]
        out.append({"channels": channels, "variant": r["variant"], "measured_mib": real / 2**20,
                    "projected_mib": p["peak_bytes"] / 2**20, "deviation_pct": 100 * (p["peak_bytes"] - real) / real,
                    "measured_collectives": r["ranks"][0]["collectives"], "projected_collectives": p["collectives"],
                    "measured_flops": r["ranks"][0]["flops"], "projected_flops": p["flops"]})
    return out


def training_rows(cfg: Config, train_dir: str | Path) -> list[dict]:
    """samples/s and peak memory per rank from each trained variant's own summary."""
    rows = []
    for v in cfg.data["train"]["variants"]:
        path = Path(train_dir) / v["name"] / "summary.json"
        if not path.is_file():
            raise InputError(path, f"no training summary of {v['name']} (run `snakemake --until train`)")
        s = read_json(path)
        rows.append({"variant": v["name"], "arch": v["arch"], "task": v["task"], "mesh": s["mesh"],
                     "samples_per_s": s["samples_per_s"], "peak_mb_per_rank": s["peak_memory_mb_per_rank"],
                     "memory_kind": s["memory_kind"], "parameters": s["parameters"]})
    return rows


def _write_csv(rows: list[dict], path: Path, fields: list[str]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


MEASURED_FIELDS = ["channels", "variant", "peak_mib", "peak_mib_vs_tp", "samples_per_s", "samples_per_s_vs_tp",
                   "step_s", "comm_bytes", "comm_bytes_vs_tp", "comm_count", "flops", "parameters",
                   "param_mib", "grad_mib", "opt_mib", "act_mib", "temp_mib"]
PAPER_FIELDS = ["config", "arch", "recipe_name", "depth", "world", "tp", "fsdp", "parameters", "peak_gib",
                "logged_gb", "deviation_pct", "param_gib", "grad_gib", "opt_gib", "act_gib", "temp_gib",
                "flops", "forward_flops", "mi250x_samples_per_s", "mi250x_tflops", "h100_samples_per_s", "logged_tflops"]


def make_report(cfg: Config, train_dir: str, out_dir: str, rule: str | None, paper_dir: str | None = None) -> dict:
    """Measure, check, model and write the report (Markdown, CSV, JSON, plots) with its MLflow run."""
    from .measured import measure_all as run_measured
    from .throughput import measured_hardware

    start = time.perf_counter()
    out = Path(out_dir)
    trained = training_rows(cfg, train_dir)
    s = measure_settings(cfg)
    paper = None
    if paper_dir:
        paper = {"rows": read_json(Path(paper_dir) / "projection.json"), "plan": read_json(Path(paper_dir) / "plan.json")}
    params = {"measured": s.to_dict(), "paper_scale": bool(paper_dir)}
    with tracking.stage_run(cfg.mlflow, "report", rule, params) as run:
        measured = run_measured(s)
        rows = measured_rows(measured)
        check = projection_check(measured, s, cfg.data["report"]["processes"])
        hw = measured_hardware(measured)
        write_json(out / "measured.json", {**measured, "projection_check": check})
        _write_csv(rows, out / "measured.csv", MEASURED_FIELDS)
        plot_dir = out / "plots"
        plots.measured_ratios(rows, plot_dir / "measured_ratios.png")
        plots.memory_by_kind([{**r, "by_kind": {k: r[f"{k}_mib"] for k in ("param", "grad", "opt", "act", "temp")}}
                              for r in rows], plot_dir / "measured_by_kind.png", "MiB (rank 0)",
                             "measured peak by kind, rank 0")
        text = report_markdown(measured, rows, check, hw, trained, cfg)
        if paper:
            text += "\n\n" + paper_sections(paper["rows"], paper["plan"])
        text += f"\n\nReport written in {time.perf_counter() - start:.0f} s.\n"
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(text)
        metrics = {}
        for r in rows:
            key = f"{r['variant'].replace(' ', '_')}.{r['channels']}ch"
            metrics.update({f"peak_vs_tp.{key}": r["peak_mib_vs_tp"], f"samples_per_s_vs_tp.{key}": r["samples_per_s_vs_tp"],
                            f"comm_bytes_vs_tp.{key}": r["comm_bytes_vs_tp"]})
        metrics.update({f"projection_deviation_pct.{c['variant']}": c["deviation_pct"] for c in check})
        metrics["wall_s"] = time.perf_counter() - start
        run.log_metrics(metrics)
        for name in ("report.md", "measured.csv", "measured.json", "plots"):
            run.log_artifact(out / name, None if "." in name else name)
    return {"rows": len(rows), "seconds": time.perf_counter() - start}


def make_paper(cfg: Config, out_dir: str, rule: str | None, progress=None) -> dict:
    """Project the authors' configurations (and past them), run the planner example, write paper/."""
    from . import paper as paper_mod
    from .planner import PlanRequest, plan, plan_table
    from .render import add_throughput

    start = time.perf_counter()
    out = Path(out_dir)
    r = cfg.data["report"]
    checks = (("1.7B 1024ch TP8", "tp-baseline"), ("1.7B 1024ch TP8", "dchag-L"), ("1.7B 1024ch TP8", "dchag-C"))
    req = PlanRequest(params=r["plan"]["params"], channels=r["plan"]["channels"], gpus=r["plan"]["gpus"],
                      gpu_mem_gb=r["plan"]["gpu_mem_gb"])
    with tracking.stage_run(cfg.mlflow, "report", rule, {"assumptions": paper_mod.ASSUMPTIONS,
                                                          "plan": req.__dict__}) as run:
        rows = add_throughput(paper_mod.run_projections(paper_mod.jobs(full_depth_checks=checks),
                                                        r["processes"], progress))
        planned = plan(req, r["processes"])
        planned["table"] = plan_table(planned)
        write_json(out / "projection.json", rows)
        write_json(out / "plan.json", planned)
        flat = [{**x, **{f"{k}_gib": v / GIB for k, v in x["by_kind"].items()}} for x in rows]
        _write_csv(flat, out / "projection.csv", PAPER_FIELDS)
        main = [x for x in rows if x["recipe_name"] == "main"]
        plots.projected_vs_logged(main, out / "plots" / "projected_vs_logged.png")
        plots.memory_by_kind([{**x, "by_kind": {k: v / GIB for k, v in x["by_kind"].items()}, "label": f"{x['config']} {x['arch']}"}
                              for x in main], out / "plots" / "projected_by_kind.png", "GiB (rank 0)",
                             "projected peak by kind, rank 0 (main recipe)", label_key="label")
        with atomic_path(out / "paper.md") as tmp:
            tmp.write_text(paper_sections(rows, planned) + f"\n\nProjected in {time.perf_counter() - start:.0f} s.\n")
        run.log_metrics({f"deviation_pct.{x['config'].replace(' ', '_')}.{x['arch']}": x["deviation_pct"]
                         for x in main if x["deviation_pct"] is not None})
        for name in ("paper.md", "projection.csv", "projection.json", "plan.json", "plots"):
            run.log_artifact(out / name, None if "." in name else name)
    return {"rows": len(rows), "seconds": time.perf_counter() - start}
