"""One training step of a model too large for this machine, as rank 0 of a world of N.

A fake process group (collectives return at once) and FakeTensorMode (tensors carry
shape, dtype and device but no storage) let one process build the real model on the
meta device, cut it with the real D-CHAG/TP/FSDP2 plans, and run the real engine's
forward, backward and AdamW step. torch's MemTracker counts what rank 0 would hold, by
kind. Nothing is allocated, so a 26B model projects on a laptop in about a minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model.build import ModelSpec
from ..parallel.mesh import build_mesh, resolve_mesh
from ..train.engine import build_engine
from .frontend import forecast_step

GIB = 2**30


@dataclass
class StepRecipe:
    """What the projection assumes about training (the paper's recipe by default)."""

    micro_batch: int = 1  # samples per data-parallel rank
    precision: str = "bf16"
    activation_checkpointing: str = "blocks"
    sequence_parallel: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: bool = True  # an untracked step first; without it DTensor's sharding propagation is counted too


def _inputs(spec: ModelSpec, batch: int):
    x = torch.randn(batch, spec.channels, *spec.image)
    y = torch.randn(batch, spec.outputs, *spec.image)
    return x, torch.full((batch,), 7.0), y, torch.ones(spec.image[0])


def fake_step(spec: ModelSpec, world: int, tp: int, fsdp: int, recipe: StepRecipe | None = None) -> dict:
    """Rank 0's peak memory (bytes, total and by kind) for one training step of a forecaster on
    a world of `world` ranks (tp x fsdp x dp). Must run in a process with no process group."""
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
        engine = build_engine(spec, mesh, device, recipe, seed=None, fake_mode=fake_mode)
        with fake_mode:
            batch = _inputs(spec, recipe.micro_batch)
            if recipe.warmup:  # untracked: AdamW makes its state, DTensor caches its sharding decisions
                forecast_step(engine, *batch)
            tracker = MemTracker()
            tracker.track_external(engine.model, engine.optimizer)
            with tracker:
                forecast_step(engine, *batch)
            snapshot = tracker.get_tracker_snapshot("peak")[device]
    finally:
        dist.destroy_process_group()
    by_kind = {str(k).split(".")[-1].lower(): int(v) for k, v in snapshot.items() if k != "Total"}
    return {"peak_bytes": int(snapshot["Total"]), "by_kind": by_kind, "parameters": engine.total_params,
            "world": world, "tp": tp, "fsdp": fsdp, "recipe": vars(recipe),
            "seconds": time.perf_counter() - start}
