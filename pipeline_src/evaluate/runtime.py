"""What every distributed evaluation does: start the mesh, load a checkpoint resharded, deal out work."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from ..io import ConfigError
from ..model.build import ModelSpec, build_model
from ..parallel import checkpoint as ckpt
from ..parallel.mesh import build_mesh, check_world, init_distributed, launch_env, pick_device, resolve_mesh
from ..parallel.materialize import materialize
from ..parallel.plans import data_parallel_rank, parallelize


def start(tp: int, fsdp: int, dp: int | str, expected_world: int | None = None):
    """Initialise this rank (torchrun, srun or single process); return (mesh, device)."""
    env = launch_env()
    check_world(env, expected_world, "evaluate.nproc")
    try:
        shape = resolve_mesh(env.world_size, tp, fsdp, dp)
    except ConfigError as err:
        raise ConfigError("evaluate.mesh", f"{err.problem} (evaluate.mesh, default train.mesh; launch "
                                           f"evaluate.nproc ranks)") from None
    device = pick_device(env.local_rank)
    init_distributed(env, device)
    return build_mesh(shape, device.type), device


def load_parallel(path: str | Path, spec: ModelSpec, mesh, device) -> torch.nn.Module:
    """The checkpoint's model parallelized on `mesh` (DCP reshards from the training mesh), in eval mode."""
    model = fresh_parallel(spec, mesh, device, seed=None)  # every value comes from the checkpoint
    ckpt.load_checkpoint(path, model, None, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    return model


def fresh_parallel(spec: ModelSpec, mesh, device, seed: int | None) -> torch.nn.Module:
    """A model of `spec` parallelized on `mesh`, in eval mode: with a seed, the training's seeded
    initial weights; with None, uninitialised storage for a checkpoint to fill."""
    with torch.device("meta"):
        model = build_model(spec, seed=None)
    parallelize(model, mesh)
    materialize(model, device, seed=seed)
    return model.eval()


def share(items: list, mesh, batch: int) -> tuple[list, int, bool]:
    """(this data-parallel shard's items, forward passes every rank makes, whether this rank scores).

    All ranks make the same number of passes (FSDP and TP are collective); TP peers hold the
    same items and only TP rank 0 scores them.
    """
    shard, shards = data_parallel_rank(mesh)
    passes = math.ceil(math.ceil(len(items) / shards) / batch)
    return items[shard::shards], passes, mesh["tp"].get_local_rank() == 0


def gather(obj) -> list | None:
    """Every rank's obj, in rank order, on rank 0 (which alone writes results); None elsewhere."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def progress(enabled: bool, total: int, name: str):
    """A tqdm bar over forward passes (rank 0 only)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"evaluate {name}", disable=not enabled, unit="batch", mininterval=1.0)
