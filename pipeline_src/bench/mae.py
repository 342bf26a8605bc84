"""Benchmark: the configured MAE variants (D-CHAG and TP-only) over several seeds, held-out loss and gap.

Each (variant, seed) is a real `dchag train` run on `train.nproc` ranks under torchrun, as
the pipeline's train job runs it, with train.seed set to the seed (initial weights and
batches; the held-out masks stay fixed). The runs of one seed draw the same batches. Prints
every run's final held-out masked plant loss with the trivial references, then per pair
the gap (D-CHAG minus TP-only) and its mean and spread over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ..config import load


def parse_args(argv=None) -> argparse.Namespace:
    """Benchmark options."""
    p = argparse.ArgumentParser(prog="dchag bench mae", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--tiles", default="results/hyperspectral/tiles", help="the hyperspectral stage's tiles folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=None, help="MAE variants (default: every one in the config)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    return p.parse_args(argv)


def _train(config: Path, variant: str, tiles: str, out: Path, nproc: int) -> dict:
    """One `dchag train` run on nproc local ranks; its summary.json."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "pipeline_src.cli", "train", "--config", str(config), "--variant", variant,
           "--tiles", tiles, "--output-dir", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant}: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def run(a: argparse.Namespace, workdir: Path) -> list[dict]:
    """Train every (variant, seed); one row per run."""
    raw = yaml.safe_load(Path(a.config).read_text())
    cfg = load(a.config)
    variants = a.variants or [v["name"] for v in cfg.data["train"]["variants"] if v["task"] == "mae"]
    nproc = cfg.data["train"]["nproc"]
    rows = []
    for seed in a.seeds:
        derived = dict(raw, train={**raw.get("train", {}), "seed": seed},
                       mlflow={**raw.get("mlflow", {}), "enabled": False})
        path = workdir / f"config-seed{seed}.yaml"
        path.write_text(yaml.safe_dump(derived, sort_keys=False))
        for variant in variants:
            start = time.perf_counter()
            summary = _train(path, variant, a.tiles, workdir / f"{variant}-seed{seed}", nproc)
            h = summary["heldout"]
            rows.append({"variant": variant, "arch": cfg.variant(variant)["arch"], "seed": seed,
                         "heldout": h["heldout_loss"], "ref_zero": h["heldout_ref_zero"],
                         "ref_visible_mean": h["heldout_ref_visible_mean"], "ref_local_mean": h["heldout_ref_local_mean"],
                         "ratio": h["loss_over_best_reference"], "steps": summary["steps"],
                         "seconds": time.perf_counter() - start})
            print(f"  {variant} seed {seed}: held-out {h['heldout_loss']:.4f} "
                  f"({h['loss_over_best_reference']:.3f} of the best reference) in {rows[-1]['seconds']:.0f} s",
                  flush=True)
    return rows


def report(rows: list[dict]) -> str:
    """The per-run table and the D-CHAG minus TP-only gaps over the seeds."""
    lines = ["Held-out masked plant loss (normalised units; plant pixels of masked patches, fixed masks)",
             f"{'variant':>18} {'seed':>4} {'held-out':>9} {'zero':>7} {'visible':>8} {'/ best ref':>10} "
             f"{'local':>7} {'/ local':>7}"]
    for r in rows:
        lines.append(f"{r['variant']:>18} {r['seed']:>4} {r['heldout']:>9.4f} {r['ref_zero']:>7.4f} "
                     f"{r['ref_visible_mean']:>8.4f} {r['ratio']:>10.3f} {r['ref_local_mean']:>7.4f} "
                     f"{r['heldout'] / r['ref_local_mean']:>7.3f}")
    base = {r["seed"]: r for r in rows if r["arch"] == "tp-baseline"}
    for variant in dict.fromkeys(r["variant"] for r in rows if r["arch"] != "tp-baseline"):
        pairs = [(r, base[r["seed"]]) for r in rows if r["variant"] == variant and r["seed"] in base]
        if not pairs:
            continue
        gaps = [r["heldout"] - b["heldout"] for r, b in pairs]
        rel = [g / b["heldout"] for g, (_, b) in zip(gaps, pairs)]
        spread = statistics.stdev(gaps) if len(gaps) > 1 else float("nan")
        lines.append(f"{variant} minus TP-only over {len(gaps)} seed(s): mean {statistics.mean(gaps):+.4f}, "
                     f"standard deviation {spread:.4f}, range {min(gaps):+.4f} to {max(gaps):+.4f} "
                     f"({100 * statistics.mean(rel):+.1f}% of TP-only's loss)")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Train, then print the table and the gaps."""
    a = parse_args(argv)
    if not Path(a.tiles, "train.zarr").is_dir():
        raise SystemExit(f"{a.tiles}: no tiles (run `snakemake hs_all` first, or pass --tiles)")
    if a.workdir:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        rows = run(a, Path(a.workdir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(a, Path(tmp))
    print(report(rows))
