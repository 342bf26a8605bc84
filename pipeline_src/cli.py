"""One entry point, one subcommand per stage: `dchag era5 ...`, `dchag hyperspectral ...`, `dchag train`,
`dchag evaluate variant|baselines|scorecard`, `dchag config`, `dchag bench ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
    from .era5.acquire import acquire
    from .tracking import stage_run

    cfg = config_mod.load(args.config)
    params = {"era5": {k: v for k, v in cfg.era5.items() if k not in ("regrid", "assemble")},
              "group": args.group, "period": args.period}
    with stage_run(cfg.mlflow, "era5_acquire", args.rule, params,
                   wildcards={"group": args.group, "period": args.period}) as run:
        metrics = acquire(cfg, args.group, args.period, args.output)
        run.log_metrics(metrics)
    log.info("acquired %s (%d fields, %.1f s)", args.output, metrics["fields"], metrics["seconds"])


def cmd_regrid(args) -> None:
    """Regrid one raw file to the 5.625 deg grid and draw the preview map."""
    from .era5.plots import regrid_preview
    from .era5.regrid import regrid_file
    from .tracking import stage_run

    cfg = config_mod.load(args.config)
    params = {"regrid": cfg.era5["regrid"], "grid_deg": cfg.era5["grid_deg"], "source": cfg.era5["source"],
              "group": args.group, "period": args.period, "input_files": len(args.input)}
    with stage_run(cfg.mlflow, "era5_regrid", args.rule, params,
                   wildcards={"group": args.group, "period": args.period}) as run:
        metrics, before, after = regrid_file(cfg, args.group, args.period, args.input, args.output,
                                             args.weights_dir)
        run.set_tags({"regrid_backend": metrics["backend"]})
        run.log_metrics(metrics)
        if args.preview:
            picks = _preview_picks(cfg, args.group, before)
            regrid_preview(before, after, picks, args.preview,
                           f"{args.group} {args.period}: {cfg.era5['grid_deg']:g} deg -> 5.625 deg "
                           f"({metrics['backend']}, {cfg.era5['regrid']['method']})")
            run.log_artifact(args.preview, "previews")
        before.close()
    log.info("regridded %d file(s) -> %s with %s (%.1f fields/s)", metrics["files_read"], args.output,
             metrics["backend"], metrics["fields_per_s"])


def _preview_picks(cfg, group, ds) -> list[tuple[str, str, int | None]]:
    picks = [(c.name, c.var, c.level) for c in cfg.channels
             if c.group == group and c.name in cfg.mlflow["preview_channels"]]
    if not picks:
        first = next(c for c in cfg.channels if c.group == group)
        picks = [(first.name, first.var, first.level)]
    return picks


def cmd_assemble(args) -> None:
    """Assemble regridded files into split Zarr stores, stats, climatology and manifest."""
    import xarray as xr

    from .era5.assemble import assemble
    from .tracking import stage_run

    cfg = config_mod.load(args.config)
    files = {}
    for path in map(Path, args.inputs):
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                key = (ds.attrs["group"], str(ds.attrs["period"]))
        except (OSError, KeyError, ValueError) as err:
            raise InputError(path, f"not a regridded file of this pipeline ({err})") from None
        files[key] = path
    needed = {(g, str(y)) for g in cfg.required if g != "static" for y in cfg.all_years}
    needed |= {("static", "static")} if "static" in cfg.required else set()
    lost = sorted(needed - set(files))
    if lost:
        raise InputError(None, f"assemble: no regridded input for {', '.join('/'.join(k) for k in lost)}")
    params = {"channels": [c.name for c in cfg.channels], "years": cfg.era5["years"],
              "hours": cfg.era5["hours"], "assemble": cfg.era5["assemble"], "source": cfg.era5["source"]}
    out = Path(args.output_dir)
    with stage_run(cfg.mlflow, "era5_assemble", args.rule, params) as run:
        metrics = assemble(cfg, files, out)
        run.log_metrics(metrics)
        for name in ("normalization.json", "manifest.json"):
            run.log_artifact(out / name, "data")
    log.info("assembled %d channels into %s (%.1f s)", metrics["n_channels"], out, metrics["seconds"])


def cmd_hs_acquire(args) -> None:
    """Write one synthetic plant scene (raw, white, dark) as ENVI cubes."""
    from .hyperspectral.synthetic import configured_scene, write_scene

    cfg = config_mod.load(args.config)
    syn = cfg.hyperspectral["synthetic"]
    scene = configured_scene(syn, cfg.hyperspectral_images().index(args.image))
    write_scene(scene, args.output_dir, args.image, "envi", syn["interleave"], syn["dtype"])
    log.info("wrote synthetic scene %s (%.1f%% leaf)", args.image, 100 * scene.leaves.mean())


def cmd_hs_preprocess(args) -> None:
    """Calibrate, band-process and mask one cube; write its Zarr, summary and preview."""
    import zarr

    from .hyperspectral.plots import preview
    from .hyperspectral.stage import preprocess_image
    from .tracking import stage_run

    cfg = config_mod.load(args.config)
    hs = cfg.hyperspectral
    params = {"image": args.image, "bands": hs["bands"], "calibrate": hs["calibrate"], "mask": hs["mask"],
              "source": hs["source"]}
    with stage_run(cfg.mlflow, "hs_preprocess", args.rule, params, wildcards={"image": args.image}) as run:
        entry = next((f for f in hs["files"] if f["name"] == args.image), {}) if hs["source"] == "files" else {}
        summary = preprocess_image(args.raw, args.white, args.dark, hs, args.output, args.summary,
                                   entry.get("datasets"))
        run.log_metrics({"plant_fraction": summary["plant_fraction"], "seconds": summary["seconds"],
                         "megabytes_read": summary["bytes_read"] / 1e6,
                         "megabytes_per_s": summary["bytes_read"] / 1e6 / summary["seconds"]})
        run.set_tags({"format": summary["format"], "interleave": summary["interleave"]})
        g = zarr.open_group(args.output, mode="r")
        preview(g["reflectance"][:], g["wavelength"][:], g["mask"][:].astype(bool), args.preview,
                f"{args.image}: {summary['format']} {summary['interleave']}, {summary['bands_out']} bands")
        run.log_artifact(args.preview, "previews")
        run.log_artifact(args.summary, "summaries")
    log.info("%s: %.1f%% plant pixels", args.image, 100 * summary["plant_fraction"])


def tile_consumers(cfg) -> dict[str, str]:
    """Split -> the later stage that reads its tiles: MAE variants train on train, are evaluated on val and test."""
    maes = [v["name"] for v in cfg.data["train"]["variants"] if v["task"] == "mae"]
    if not maes or cfg.data["mae"]["source"] != "hyperspectral":
        return {}
    names = ", ".join(maes)
    return {"train": f"training of {names}", "val": f"evaluation of {names}", "test": f"evaluation of {names}"}


def cmd_hs_tiles(args) -> None:
    """Band statistics on training plant pixels, then normalised tiles per split."""
    from .hyperspectral.plots import spectra
    from .hyperspectral.stage import make_tiles, read_summaries
    from .tracking import stage_run

    cfg = config_mod.load(args.config)
    hs = cfg.hyperspectral
    images = {Path(p).stem: Path(p) for p in args.inputs}
    params = {"tiles": hs["tiles"], "splits": hs["splits"], "images": sorted(images)}
    with stage_run(cfg.mlflow, "hs_tiles", args.rule, params) as run:
        stats = make_tiles(images, hs, args.output_dir, tile_consumers(cfg))
        if stats["empty_splits"]:
            run.set_tags({"empty_splits": ",".join(stats["empty_splits"])})
        summaries = read_summaries(args.summaries)
        spectra(summaries, args.spectra)
        run.log_metrics({f"tiles_{k}": v for k, v in stats["tiles"].items()})
        run.log_metrics({"plant_pixels_train": stats["plant_pixels"],
                         "mean_plant_fraction": sum(s["plant_fraction"] for s in summaries.values())
                         / len(summaries)})
        for band, (wl, mean, std) in enumerate(zip(stats["wavelengths"], stats["mean"], stats["std"])):
            # one point per band (MLflow step = band index) so the UI plots the spectra
            run.log_metrics({"band_mean": mean, "band_std": std, "band_wavelength_nm": wl}, step=band)
        run.log_artifact(Path(args.output_dir) / "stats.json", "data")
        run.log_artifact(args.spectra, "plots")
    log.info("tiles per split: %s", stats["tiles"])


def cmd_train(args) -> None:
    """Train one configured variant on this rank (run under torchrun or srun; rank 0 logs)."""
    from .train.job import job_from_config
    from .train.loop import Preempted, run_training

    cfg = config_mod.load(args.config)
    job = job_from_config(cfg, args.variant, args.output_dir, args.assembled, args.rule, args.tiles)
    try:
        summary = run_training(job)
    except Preempted as stop:
        log.warning("%s", stop)
        raise SystemExit(3) from None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if summary.get("final_loss") is not None and is_rank_zero():
        log.info("%s: %d steps, final loss %.4g", job.name, summary["steps"], summary["final_loss"])


def cmd_evaluate(args) -> None:
    """Evaluate one trained variant on this rank (run under torchrun or srun; rank 0 writes)."""
    from .evaluate.stage import evaluate_forecaster, evaluate_mae

    cfg = config_mod.load(args.config)
    variant = cfg.variant(args.variant)
    try:
        if variant["task"] == "forecast":
            evaluate_forecaster(cfg, args.variant, args.checkpoint, args.assembled, args.output_dir, args.rule)
        else:
            evaluate_mae(cfg, args.variant, args.checkpoint, args.tiles, args.output_dir, args.rule)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


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
    pl.add_argument("--headroom", type=float, default=0.10, help="fraction kept free (allocator, comm buffers)")
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
