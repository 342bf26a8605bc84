"""One entry point, one subcommand per stage: `dchag era5 ...`, `dchag hyperspectral ...`, `dchag train`,
`dchag evaluate variant|baselines|scorecard`, `dchag config`, `dchag bench ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from . import config as config_mod
from .io import InputError
from .secrets import install_log_filter
from .tracking import is_rank_zero

log = logging.getLogger("dchag")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "mlflow", "urllib3", "fsspec", "gcsfs", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_filter()


def cmd_config(args) -> None:
    """Validate a config file and print it with defaults filled in (or print the key reference)."""
    import yaml

    if args.reference:
        print(config_mod.reference_markdown(), end="")
        return
    cfg = config_mod.load(args.config)
    print(yaml.safe_dump(cfg.data, sort_keys=False), end="")


def cmd_acquire(args) -> None:
    """Acquire one raw ERA5 file (group, period) from the configured source."""
    from .era5.stage import acquire_stage

    acquire_stage(config_mod.load(args.config), args.group, args.period, args.output, args.rule)


def cmd_regrid(args) -> None:
    """Regrid one raw file to the 5.625 deg grid and draw the preview map."""
    from .era5.stage import regrid_stage

    regrid_stage(config_mod.load(args.config), args.group, args.period, args.input, args.output, args.weights_dir,
                 args.preview, args.rule)


def cmd_assemble(args) -> None:
    """Assemble regridded files into split Zarr stores, stats, climatology and manifest."""
    from .era5.stage import assemble_stage

    assemble_stage(config_mod.load(args.config), args.inputs, args.output_dir, args.rule)


def cmd_hs_acquire(args) -> None:
    """Write one synthetic plant scene (raw, white, dark) as ENVI cubes."""
    from .hyperspectral.stage import acquire_scene

    acquire_scene(config_mod.load(args.config), args.image, args.output_dir)


def cmd_hs_preprocess(args) -> None:
    """Calibrate, band-process and mask one cube; write its Zarr, summary and preview."""
    from .hyperspectral.stage import preprocess_stage

    preprocess_stage(config_mod.load(args.config), args.image, args.raw, args.white, args.dark, args.output,
                     args.summary, args.preview, args.rule, args.traits)


def cmd_hs_tiles(args) -> None:
    """Band statistics on training plant pixels, then normalised tiles per split."""
    from .hyperspectral.stage import tiles_stage

    tiles_stage(config_mod.load(args.config), args.inputs, args.summaries, args.output_dir, args.spectra, args.rule)


def cmd_train(args) -> None:
    """Train one configured variant on this rank (run under torchrun or srun; rank 0 logs)."""
    from .parallel.mesh import process_group_closed
    from .train.job import job_from_config
    from .train.loop import Preempted, run_training

    job = job_from_config(config_mod.load(args.config), args.variant, args.output_dir, args.assembled, args.rule,
                          args.tiles)
    try:
        with process_group_closed():
            summary = run_training(job)
    except Preempted as stop:
        log.warning("%s", stop)
        raise SystemExit(3) from None
    if summary.get("final_loss") is not None and is_rank_zero():
        log.info("%s: %d steps, final loss %.4g", job.name, summary["steps"], summary["final_loss"])


def cmd_evaluate(args) -> None:
    """Evaluate one trained variant on this rank (run under torchrun or srun; rank 0 writes)."""
    from .evaluate.stage import evaluate_variant
    from .parallel.mesh import process_group_closed

    with process_group_closed():
        evaluate_variant(config_mod.load(args.config), args.variant, args.checkpoint, args.assembled, args.tiles,
                         args.output_dir, args.rule)


def cmd_evaluate_baselines(args) -> None:
    """Score climatology and persistence on the evaluation's initialisation times."""
    from .evaluate.stage import evaluate_baselines

    evaluate_baselines(config_mod.load(args.config), args.assembled, args.output_dir, args.rule)


def cmd_scorecard(args) -> None:
    """Merge every evaluated system into the scorecard (Markdown, CSV, plots)."""
    from .evaluate.stage import make_scorecard

    out = make_scorecard(config_mod.load(args.config), args.evaluation, args.train, args.output_dir, args.rule)
    log.info("scorecard of %d systems, %d difference rows", len(out["systems"]), out["differences"])


def cmd_mlflow_sync(args) -> None:
    """File every pending MLflow run record now (running trainings included)."""
    from .tracking import sync_pending

    cfg = config_mod.load(args.config)
    n = sync_pending(cfg.mlflow, args.pending)
    log.info("MLflow: filed %d run record(s) from %s", n, args.pending)


def cmd_report(args) -> None:
    """Measure D-CHAG vs TP-only here, check the projection, model throughput; write the report."""
    from .report.stage import make_report

    out = make_report(config_mod.load(args.config), args.train, args.output_dir, args.rule, args.paper)
    log.info("report: %d measured configurations in %.0f s", out["rows"], out["seconds"])


def cmd_report_paper(args) -> None:
    """Project the authors' configurations and run the planner example."""
    from tqdm import tqdm

    from .report.stage import make_paper

    out = make_paper(config_mod.load(args.config), args.output_dir, args.rule, tqdm)
    log.info("paper-scale projection: %d rows in %.0f s", out["rows"], out["seconds"])


def cmd_plan(args) -> None:
    """Print the planner's layouts and recommendation."""
    from .report.planner import PlanRequest, plan, plan_table

    req = PlanRequest(params=args.params, channels=args.channels, gpus=args.gpus, gpu_mem_gb=args.gpu_mem_gb,
                      image=tuple(args.image), patch=args.patch, micro_batch=args.micro_batch,
                      gpus_per_node=args.gpus_per_node, max_tp=args.max_tp, archs=tuple(args.archs),
                      trees=tuple(tuple(t) for t in ([[]] + ([args.tree] if args.tree else []))),
                      recompute=tuple(args.recompute), hsdp=args.hsdp, headroom=args.headroom, hardware=args.hardware)
    try:
        result = plan(req, args.processes)
    except ValueError as err:
        raise InputError(None, str(err)) from None
    print(plan_table(result))
    print()
    print(result["headroom_line"])
    print(("recommended: " + result["reason"]) if result["recommendation"] else result["reason"])
    if args.json:
        from .io import write_json

        write_json(args.json, result)
    if not result["recommendation"]:
        raise InputError(None, result["reason"])


def cmd_bench_era5(args) -> None:
    """Print regridding throughput per importable backend and the ERA5 stage wall times."""
    from .bench.era5 import main as bench_main

    bench_main(args)


def _variant_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", required=True, help="a name from train.variants")
    p.add_argument("--assembled", default=None, help="assembled ERA5 folder (forecast variants)")
    p.add_argument("--tiles", default=None, help="hyperspectral tiles folder (MAE variants)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of the `dchag` command."""
    p = argparse.ArgumentParser(prog="dchag", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("config", help="validate a config and print it with defaults")
    c.add_argument("--config", default="config.yaml")
    c.add_argument("--reference", action="store_true", help="print every key of the schema as a Markdown table")
    c.set_defaults(func=cmd_config)

    era5 = sub.add_parser("era5", help="ERA5 stages").add_subparsers(dest="stage", required=True)
    for name, func, help_ in (("acquire", cmd_acquire, "download or generate one raw file"),
                              ("regrid", cmd_regrid, "regrid one raw file to 5.625 deg"),
                              ("assemble", cmd_assemble, "build model-ready Zarr splits")):
        s = era5.add_parser(name, help=help_)
        s.add_argument("--config", default="config.yaml", help="config YAML (validated)")
        s.add_argument("--rule", default=None, help="Snakemake rule name, for MLflow tags")
        s.set_defaults(func=func)
        if name in ("acquire", "regrid"):
            s.add_argument("--group", required=True, choices=["pressure", "single", "static"])
            s.add_argument("--period", required=True, help="a year, or 'static'")
        if name == "acquire":
            s.add_argument("--output", required=True)
        if name == "regrid":
            s.add_argument("--input", nargs="+", required=True,
                           help="the raw file of the period, or the files that together hold it")
            s.add_argument("--output", required=True)
            s.add_argument("--preview", default=None, help="PNG map before/after")
            s.add_argument("--weights-dir", default=None, help="xESMF weights cache folder")
        if name == "assemble":
            s.add_argument("--inputs", nargs="+", required=True, help="regridded NetCDF files")
            s.add_argument("--output-dir", required=True)

    hsp = sub.add_parser("hyperspectral", help="hyperspectral stages").add_subparsers(dest="stage", required=True)
    h = hsp.add_parser("acquire", help="write one synthetic plant scene (ENVI raw + white + dark)")
    h.add_argument("--image", required=True)
    h.add_argument("--output-dir", required=True)
    h.set_defaults(func=cmd_hs_acquire)
    h = hsp.add_parser("preprocess", help="calibrate, band-process and mask one cube")
    for name in ("--image", "--raw", "--white", "--dark", "--output", "--summary", "--preview"):
        h.add_argument(name, required=True)
    h.add_argument("--traits", default=None, help="leaf-trait raster of the same pixels (ENVI), for the probe")
    h.set_defaults(func=cmd_hs_preprocess)
    h = hsp.add_parser("tiles", help="normalise and tile the preprocessed images per split")
    h.add_argument("--inputs", nargs="+", required=True, help="preprocessed image Zarr stores")
    h.add_argument("--summaries", nargs="+", required=True, help="their JSON summaries")
    h.add_argument("--output-dir", required=True)
    h.add_argument("--spectra", required=True, help="PNG of mean plant/background spectra")
    h.set_defaults(func=cmd_hs_tiles)
    for h in hsp.choices.values():
        h.add_argument("--config", default="config.yaml")
        h.add_argument("--rule", default=None)

    t = sub.add_parser("train", help="train one model variant (launch with torchrun or srun)")
    _variant_arguments(t)
    t.add_argument("--output-dir", required=True, help="run folder: final/, summary.json, checkpoints/")
    t.add_argument("--config", default="config.yaml")
    t.add_argument("--rule", default=None)
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluation stage").add_subparsers(dest="stage", required=True)
    e = ev.add_parser("variant", help="evaluate one trained variant (launch with torchrun or srun)")
    _variant_arguments(e)
    e.add_argument("--checkpoint", required=True, help="the variant's final checkpoint folder")
    e.add_argument("--output-dir", required=True)
    e.set_defaults(func=cmd_evaluate)
    e = ev.add_parser("baselines", help="climatology and persistence on the same initialisation times")
    e.add_argument("--assembled", required=True)
    e.add_argument("--output-dir", required=True, help="folder that gets climatology/ and persistence/")
    e.set_defaults(func=cmd_evaluate_baselines)
    e = ev.add_parser("scorecard", help="every variant and both baselines side by side")
    e.add_argument("--evaluation", required=True, help="folder of the per-system evaluations")
    e.add_argument("--train", required=True, help="training folder (summaries for loss curves)")
    e.add_argument("--output-dir", required=True)
    e.set_defaults(func=cmd_scorecard)
    for e in ev.choices.values():
        e.add_argument("--config", default="config.yaml")
        e.add_argument("--rule", default=None)

    rp = sub.add_parser("report", help="memory/throughput report stage").add_subparsers(dest="part", required=True)
    r = rp.add_parser("run", help="measure here, check the projection, model throughput, write report.md")
    r.add_argument("--train", required=True, help="training folder (the variants' summaries)")
    r.add_argument("--output-dir", required=True)
    r.add_argument("--paper", default=None, help="paper-scale folder (report paper) to include")
    r.set_defaults(func=cmd_report)
    r = rp.add_parser("paper", help="project the authors' configurations and run the planner example")
    r.add_argument("--output-dir", required=True)
    r.set_defaults(func=cmd_report_paper)
    for r in rp.choices.values():
        r.add_argument("--config", default="config.yaml")
        r.add_argument("--rule", default=None)

    pl = sub.add_parser("plan", help="projected peak GB per GPU of each layout, and the one to launch")
    pl.add_argument("--params", required=True, help="backbone class: 1.7B, 7B, 15B or 26B (depth 32)")
    pl.add_argument("--channels", type=int, required=True)
    pl.add_argument("--gpus", type=int, required=True)
    pl.add_argument("--gpu-mem-gb", type=float, required=True, help="memory per GPU in GiB (64 on a Frontier GCD)")
    pl.add_argument("--image", type=int, nargs=2, default=[128, 256])
    pl.add_argument("--patch", type=int, default=4)
    pl.add_argument("--micro-batch", type=int, default=1, help="samples per GPU per step")
    pl.add_argument("--gpus-per-node", type=int, default=8)
    pl.add_argument("--max-tp", type=int, default=None, help="largest TP size (default: a node)")
    pl.add_argument("--archs", nargs="+", default=["dchag-L", "dchag-C"],
                    choices=["tp-baseline", "dchag-L", "dchag-C", "gather-all"])
    pl.add_argument("--tree", type=int, nargs="*", default=None, help="also try this aggregation tree, e.g. 4")
    pl.add_argument("--recompute", nargs="+", default=["none", "blocks"], choices=["none", "blocks", "full"])
    pl.add_argument("--hsdp", action="store_true", help="also try FSDP within a node, data parallel across nodes")
    pl.add_argument("--headroom", type=float, default=None,
                    help="fraction of GPU memory kept free (default: from the largest measured gap between the "
                         "authors' logged peaks and their projections)")
    pl.add_argument("--hardware", default="mi250x-gcd", choices=["mi250x-gcd", "h100-sxm"],
                    help="for the throughput estimate that ranks the layouts")
    pl.add_argument("--processes", type=int, default=None, help="projection worker processes (default: cores)")
    pl.add_argument("--json", default=None, help="also write every layout as JSON here")
    pl.set_defaults(func=cmd_plan)

    ml = sub.add_parser("mlflow", help="MLflow store").add_subparsers(dest="action", required=True)
    m = ml.add_parser("sync", help="file pending run records now (follow a running training in mlflow ui)")
    m.add_argument("--config", default="config.yaml", help="for the mlflow section (tracking URI, experiment)")
    m.add_argument("--pending", default="results/mlflow/pending", help="folder of pending run records")
    m.set_defaults(func=cmd_mlflow_sync)

    b = sub.add_parser("bench", help="benchmarks (print measured ratios)").add_subparsers(dest="what", required=True)
    br = b.add_parser("era5", help="regrid throughput per backend and ERA5 stage wall times")
    br.add_argument("--config", default="config.yaml")
    br.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    br.set_defaults(func=cmd_bench_era5)
    # listed for --help; main() hands their arguments to the benchmark modules themselves
    b.add_parser("hyperspectral", help="hyperspectral preprocessing cubes/s and MB/s per format")
    b.add_parser("frontend", help="peak memory per rank and samples/s: tp-baseline vs dchag-L vs dchag-C")
    b.add_parser("loader", help="training input pipeline samples/s per rank vs training's consumption")
    b.add_parser("mae", help="D-CHAG and TP-only MAEs over seeds: held-out loss, references, gap")
    b.add_parser("oracles", help="how low the masked plant loss can go on the synthetic scenes (leaf oracles)")
    return p


FORWARDED_BENCHES = ("frontend", "hyperspectral", "loader", "mae", "oracles")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input exits with status 2 and a one-line message naming the file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in FORWARDED_BENCHES:
        # these benchmarks own their options (argparse REMAINDER cannot pass "--x" through)
        import importlib

        importlib.import_module(f"pipeline_src.bench.{argv[1]}").main(argv[2:])
        return 0
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        args.func(args)
    except InputError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
