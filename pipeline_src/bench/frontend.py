"""Benchmark: per-rank peak memory and samples/s of tp-baseline vs dchag-L vs dchag-C.

Real processes (gloo on CPU, NCCL/RCCL on GPUs), one model per (variant, channels), the
same training step the loop runs (forward, backward, AdamW). Peak memory is the CUDA
allocator's max on GPUs and torch's MemTracker (torch.distributed._tools) on CPU, which
counts tensor bytes by category (parameters, gradients, optimizer state, activations).
Prints ratios to the baseline measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..model.build import ModelSpec
from ..parallel.mesh import build_mesh, init_distributed, launch_env, pick_device, resolve_mesh
from ..parallel.spawn import run_local
from ..train.engine import build_engine
from ..train.losses import forecast_loss

ARCHS = ("tp-baseline", "dchag-L", "dchag-C")


def _spec(arch: str, channels: int, a: argparse.Namespace, tp: int) -> ModelSpec:
    return ModelSpec(arch=arch, task="forecast", channels=channels, image=tuple(a.image), patch=a.patch,
                     dim=a.dim, depth=a.depth, heads=a.heads, agg_heads=a.heads, mlp_ratio=4.0,
                     partitions=1 if arch == "tp-baseline" else tp, outputs=a.outputs)


def forecast_step(engine, x, lead, y, lat_w) -> None:
    """One training step of a forecaster engine on a fixed batch (the loop's loss, backward and update)."""
    with engine.autocast():
        loss = forecast_loss(engine.model(x, lead).float(), y, lat_w)
    loss.backward()
    engine.step(1e-4, 1.0)


def _measure(spec: ModelSpec, mesh, device, a) -> dict:
    engine = build_engine(spec, mesh, device, a, seed=0)  # the training loop's engine and recipe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, spec.channels, *spec.image, generator=g).to(device)
    y = torch.randn(a.batch, spec.outputs, *spec.image, generator=g).to(device)
    lead = torch.full((a.batch,), 7.0, device=device)
    lat_w = torch.ones(spec.image[0], device=device)
    forecast_step(engine, x, lead, y, lat_w)  # warm-up: optimizer state exists from here on
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        forecast_step(engine, x, lead, y, lat_w)
        peak = torch.cuda.max_memory_allocated(device)
        by_kind = {}
    else:
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
        tracker.track_external(engine.model, engine.optimizer)
        with tracker:
            forecast_step(engine, x, lead, y, lat_w)
        snap = tracker.get_tracker_snapshot("peak")[device]
        peak = snap["Total"]
        by_kind = {k: v for k, v in snap.items() if k != "Total"}
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        forecast_step(engine, x, lead, y, lat_w)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - t0
    return {"peak_bytes": int(peak), "by_kind": {str(k): int(v) for k, v in by_kind.items()},
            "samples_per_s": a.batch * a.steps / seconds}


def worker(a: argparse.Namespace, out_file: str) -> None:
    """Measure every (channels, arch) on this rank; rank 0 writes all ranks' results."""
    env = launch_env()
    device = pick_device(env.local_rank)
    if device.type == "cpu":  # one share of the cores per rank, as the launchers set OMP_NUM_THREADS
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.world_size))
    init_distributed(env, device)
    mesh = build_mesh(resolve_mesh(env.world_size, env.world_size), device.type)
    results = []
    for channels in a.channels:
        for arch in a.archs:
            spec = _spec(arch, channels, a, env.world_size)
            r = _measure(spec, mesh, device, a)
            per_rank = [None] * env.world_size
            dist.all_gather_object(per_rank, r)
            results.append({"arch": arch, "channels": channels, "ranks": per_rank})
    if env.rank == 0:
        Path(out_file).write_text(json.dumps({"device": device.type, "world": env.world_size,
                                              "args": vars(a), "results": results}, indent=2))
    dist.destroy_process_group()


def table(report: dict) -> str:
    """The measured results as a text table with ratios to tp-baseline at the same channel count."""
    args = report["args"]
    lines = [f"device={report['device']} ranks={report['world']} (tp={report['world']}) "
             f"dim={args['dim']} depth={args['depth']} image={args['image']} "
             f"patch={args['patch']} batch/rank={args['batch']} precision={args.get('precision', 'auto')} "
             f"recompute={args.get('activation_checkpointing', 'none')} "
             f"sequence_parallel={args.get('sequence_parallel', False)}",
             f"{'channels':>8} {'variant':>12} {'peak MiB/rank':>14} {'vs TP':>7} {'samples/s':>10} {'vs TP':>7}"]
    base = {}
    for r in report["results"]:
        peak = max(x["peak_bytes"] for x in r["ranks"]) / 2**20
        rate = r["ranks"][0]["samples_per_s"]
        if r["arch"] == "tp-baseline":
            base[r["channels"]] = (peak, rate)
        bp, br = base.get(r["channels"], (peak, rate))
        lines.append(f"{r['channels']:>8} {r['arch']:>12} {peak:>14.1f} {peak / bp:>7.2f} "
                     f"{rate:>10.2f} {rate / br:>7.2f}")
    kinds = sorted({k for r in report["results"] for k in r["ranks"][0]["by_kind"]})
    if kinds:
        lines += ["", "rank-0 peak by kind (MiB, MemTracker):",
                  f"{'channels':>8} {'variant':>12} " + " ".join(f"{k.split('.')[-1][:12]:>12}" for k in kinds)]
        for r in report["results"]:
            by_kind = r["ranks"][0]["by_kind"]
            lines.append(f"{r['channels']:>8} {r['arch']:>12} " +
                         " ".join(f"{by_kind.get(k, 0) / 2**20:>12.1f}" for k in kinds))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Benchmark options (defaults sized for a 2-core CPU box; raise dim/depth on GPUs)."""
    p = argparse.ArgumentParser(prog="dchag bench frontend", description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--channels", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--image", type=int, nargs=2, default=[32, 64])
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--outputs", type=int, default=5)
    p.add_argument("--batch", type=int, default=2, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="as train.precision (auto: bf16 on GPUs)")
    p.add_argument("--recompute", dest="activation_checkpointing", choices=["none", "blocks", "full"],
                   default="none", help="as train.activation_checkpointing")
    p.add_argument("--sequence-parallel", action="store_true", help="as train.sequence_parallel")
    p.add_argument("--json", default=None, help="also write the raw results here")
    a = p.parse_args(argv)
    a.lr, a.weight_decay = 1e-4, 0.05  # the engine's optimizer settings
    return a


def main(argv=None) -> None:
    """Run the benchmark on --ranks local processes and print the table."""
    a = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        run_local(worker, a.ranks, a, str(out))
        report = json.loads(out.read_text())
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
