"""One training step of a model too large for this machine, as rank 0 of a world of N.

A fake process group (collectives return at once) and FakeTensorMode (tensors carry
shape, dtype and device but no storage) let one process build the real model on the
meta device, cut it with the real D-CHAG/TP/FSDP2 plans, and run the real engine's
forward, backward and AdamW step. torch's MemTracker counts what rank 0 would hold, by
kind; StepTraffic and CollectiveLog count its FLOPs, memory traffic and collectives. Nothing is
allocated, so a 26B model projects on a laptop.

Every block of the backbone adds the same parameters, optimizer state, saved activations
and FLOPs, so `project` runs two shallow copies of the model (depths 2 and 4 by default)
and extends each figure linearly to the real depth: seconds instead of minutes per
layout. `fake_step` at the real depth checks that extension (report.paper does, per table).
That holds while the peak stays in the same phase of the step. Without activation
checkpointing it does not: in a shallow model the front end's transient is the peak, in a
deep one the activations every block saves for backward (7B, 512 channels, TP16, D-CHAG-L:
5.2 and 5.6 GiB at depths 2 and 4, 17.6 GiB at depth 32, not the 10.8 the extension gives),
so a recipe without recompute is projected at its real depth.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist

from ..model.build import ModelSpec
from ..parallel.mesh import build_mesh, resolve_mesh
from ..train.engine import build_engine, recipe_options
from .collectives import CollectiveLog
from .traffic import StepTraffic
from .measured import forecast_step, step_inputs

GIB = 2**30
FIT_DEPTHS = (2, 4)


@dataclass(frozen=True)
class StepRecipe:
    """What the projection assumes about training (the D-CHAG authors' recipe by default)."""

    micro_batch: int = 1  # samples per data-parallel rank per step
    precision: str = "bf16"  # with FSDP: bf16 parameters and compute, fp32 master weights, Adam state, reduction
    activation_checkpointing: str = "blocks"
    sequence_parallel: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: bool = True  # an untracked step first; without it DTensor's sharding propagation is counted too


def fake_step(spec: ModelSpec, world: int, tp: int, fsdp: int, recipe: StepRecipe | None = None) -> dict:
    """Rank 0's peak memory (bytes, total and by kind), FLOPs and collectives for one training step
    of a forecaster on a world of `world` ranks (tp x fsdp x dp). Run where no process group exists."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if spec.task != "forecast":
        raise ValueError("the projection runs forecasters")
    recipe = recipe or StepRecipe()
    start = time.perf_counter()
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        mesh = build_mesh(resolve_mesh(world, tp, fsdp), "cpu")
        device = torch.device("cpu")
        fake_mode = FakeTensorMode()
        engine = build_engine(spec, mesh, device, seed=None, fake_mode=fake_mode, **recipe_options(recipe))
        with fake_mode:
            batch = step_inputs(spec, recipe.micro_batch)
            if recipe.warmup:  # untracked: AdamW makes its state, DTensor caches its sharding decisions
                forecast_step(engine, *batch)
            tracker, log, traffic = MemTracker(), CollectiveLog(), StepTraffic()
            tracker.track_external(engine.model, engine.optimizer)
            with tracker, log, traffic:
                forecast_step(engine, *batch)
            snapshot = tracker.get_tracker_snapshot("peak")[device]
            # the authors' TFLOPS count 3 x forward FLOPs; StepTraffic counts this rank's local ops
            # (FlopCounterMode alone counts a DTensor op's global FLOPs)
            forward = StepTraffic()
            with forward, torch.no_grad(), engine.autocast():
                engine.model(batch[0], batch[1])
    finally:
        dist.destroy_process_group()
    by_kind = {str(k).split(".")[-1].lower(): int(v) for k, v in snapshot.items() if k != "Total"}
    return {"peak_bytes": int(snapshot["Total"]), "by_kind": by_kind, "parameters": engine.total_params,
            "flops": traffic.matmul_flops, "forward_flops": forward.matmul_flops,
            "collectives": log.summary(),
            "collective_groups": log.by_group(), "traffic": traffic.summary(),
            "world": world, "tp": tp, "fsdp": fsdp, "depth": spec.depth, "recipe": asdict(recipe),
            "seconds": time.perf_counter() - start}


def _extend(a, b, da: int, db: int, depth: int):
    """Linear in depth through (da, a) and (db, b), evaluated at depth (nested dicts of numbers)."""
    if isinstance(a, dict):
        return {k: _extend(a.get(k, 0), b.get(k, 0), da, db, depth) for k in set(a) | set(b)}
    return int(round(a + (b - a) * (depth - da) / (db - da)))


def _consistent_kinds(extended: dict, deeper: dict, peak: int) -> dict:
    """Kinds at the peak that add up to it. Parameters, gradients and optimizer state grow exactly
    linearly with depth; activations and temporaries do too unless the peak moves to another
    phase of the step between the two shallow models (then their extension can go negative):
    in that case the rest of the peak is split between them as in the deeper model."""
    if all(v >= 0 for v in extended.values()):
        return extended
    out = {k: max(0, extended.get(k, 0)) for k in ("param", "grad", "opt", "buffer")}
    rest = max(0, peak - sum(out.values()))
    transient = {k: deeper.get(k, 0) for k in ("act", "temp", "oth")}
    total = sum(transient.values()) or 1
    out.update({k: int(rest * v / total) for k, v in transient.items()})
    return out


def project(spec: ModelSpec, world: int, tp: int, fsdp: int, recipe: StepRecipe | None = None,
            fit_depths: tuple[int, int] = FIT_DEPTHS) -> dict:
    """fake_step's figures at spec.depth, extended linearly in depth from two shallow models
    (with activation checkpointing; without it, fake_step at spec.depth: see the module doc)."""
    if spec.depth in fit_depths or (recipe or StepRecipe()).activation_checkpointing == "none":
        return fake_step(spec, world, tp, fsdp, recipe)
    da, db = fit_depths
    start = time.perf_counter()
    a = fake_step(replace(spec, depth=da), world, tp, fsdp, recipe)
    b = fake_step(replace(spec, depth=db), world, tp, fsdp, recipe)
    out = dict(a)
    for key in ("peak_bytes", "by_kind", "parameters", "flops", "forward_flops", "collectives", "traffic"):
        out[key] = _extend(a[key], b[key], da, db, spec.depth)
    out["by_kind"] = _consistent_kinds(out["by_kind"], b["by_kind"], out["peak_bytes"])
    groups_b = {(g["kind"], g["group_size"], g["rank_span"]): g for g in b["collective_groups"]}
    out["collective_groups"] = []
    for g in a["collective_groups"]:
        gb = groups_b.get((g["kind"], g["group_size"], g["rank_span"]), g)
        out["collective_groups"].append({**g, **{k: _extend(g[k], gb[k], da, db, spec.depth) for k in ("count", "bytes")}})
    out.update(depth=spec.depth, extended_from=list(fit_depths), seconds=time.perf_counter() - start)
    return out


def _run(job: tuple) -> dict:
    import warnings

    # FSDP2 warns for every module that returns a view; none of ours is modified in place
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    kind, spec_dict, world, tp, fsdp, recipe_dict = job
    spec, recipe = ModelSpec.from_dict(spec_dict), StepRecipe(**recipe_dict)
    if kind == "fake_step":
        return fake_step(spec, world, tp, fsdp, recipe)
    return project(spec, world, tp, fsdp, recipe)


def run_many(jobs: list[tuple[str, ModelSpec, int, int, int, StepRecipe]], processes: int | None = None,
             progress=None) -> list[dict]:
    """Run ("project" | "fake_step", spec, world, tp, fsdp, recipe) jobs in worker processes, in order.

    Each worker process owns the global fake process group in turn; one per core by default.
    progress: a tqdm-like callable wrapping the iterator of finished jobs (None: quiet).
    """
    import multiprocessing

    processes = processes or max(1, min(len(jobs), os.cpu_count() or 1))
    payload = [(kind, spec.to_dict(), world, tp, fsdp, asdict(recipe)) for kind, spec, world, tp, fsdp, recipe in jobs]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run, p) for p in payload]
        if progress is not None:
            from concurrent.futures import as_completed

            for _ in progress(as_completed(futures), total=len(futures)):
                pass
        return [f.result() for f in futures]
