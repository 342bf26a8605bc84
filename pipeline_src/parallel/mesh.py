"""Launch environment (torchrun or Slurm), process group, and the dp x fsdp x tp device mesh."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..io import ConfigError
from .hpc_env import apply_rocm_defaults

MESH_DIMS = ("dp", "fsdp", "tp")


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job: rank, world size, rank on the node, rendezvous address."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | single


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'frontier[00012-00015,00020],x1' -> 'frontier00012'."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not m or not nodelist:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    prefix, _, ranges = m.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read torchrun variables (RANK, WORLD_SIZE, ...) or else Slurm's (SLURM_PROCID, ...)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
                         "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        port = int(env.get("MASTER_PORT") or 20000 + job % 20000)
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                         int(env.get("SLURM_LOCALID", 0)), env.get("MASTER_ADDR") or first_host(nodes),
                         port, "slurm")
    return LaunchEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 29500)), "single")


def check_world(env: LaunchEnv, expected: int | None, key: str, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError before any rendezvous when the launcher started another number of ranks than
    `key` asks for, saying which launcher variable was missing or wrong."""
    if expected is None or env.world_size == expected:
        return
    e = os.environ if environ is None else environ
    if env.launcher == "single":
        why = ("no launcher variables: neither torchrun's RANK/WORLD_SIZE nor srun's SLURM_PROCID/"
               f"SLURM_NTASKS are set; start it with torchrun --nproc-per-node {expected} or srun -n {expected}")
    elif env.launcher == "slurm":
        why = (f"srun started {env.world_size} task(s) (SLURM_NTASKS={e.get('SLURM_NTASKS')}, "
               f"SLURM_STEP_NUM_TASKS={e.get('SLURM_STEP_NUM_TASKS', 'unset')}): give srun -n {expected} "
               f"(inside a Snakemake job step the SLURM_* variables are stripped and a bare srun runs one task)")
    else:
        why = f"torchrun set WORLD_SIZE={e.get('WORLD_SIZE')}: use --nproc-per-node {expected}"
    raise ConfigError(key, f"configured for {expected} ranks, launched with {env.world_size}: {why}")


def is_main() -> bool:
    """True on global rank 0 of the process group (or when not distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def pick_device(local_rank: int) -> torch.device:
    """cuda:<local rank modulo visible GPUs> when GPUs are visible (ROCm included), else cpu."""
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_distributed(env: LaunchEnv, device: torch.device, timeout_s: float = 600) -> str:
    """Initialise the default process group (NCCL/RCCL on GPUs, gloo on CPU); return the backend."""
    backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return dist.get_backend()
    if device.type == "cuda":
        apply_rocm_defaults(env.rank)  # Frontier: RCCL/libfabric, MIOpen caches (ROCm builds only)
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    return backend


@dataclass(frozen=True)
class MeshShape:
    """Sizes of the data-parallel, fully-sharded and tensor-parallel mesh dimensions."""

    dp: int
    fsdp: int
    tp: int

    @property
    def world(self) -> int:
        """Ranks the mesh spans."""
        return self.dp * self.fsdp * self.tp

    @property
    def data_parallel(self) -> int:
        """Ranks that see different data (dp x fsdp)."""
        return self.dp * self.fsdp


@contextmanager
def process_group_closed():
    """Run a rank's stage and destroy its process group afterwards, however the stage ends.

    After a stage that completed, the ranks first meet in a barrier: a rank that leaves while
    another still writes its outputs tore down gloo under it (rank 1 of an MAE evaluation died
    with SIGABRT, "terminate called without an active exception", once in a loaded test run)."""
    try:
        yield
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_mesh(world: int, tp: int, fsdp: int = 1, dp: int | str = "auto") -> MeshShape:
    """Mesh sizes for `world` ranks; dp='auto' takes what tp x fsdp leaves. ConfigError if impossible."""
    for name, value in (("tp", tp), ("fsdp", fsdp)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError("train.mesh", f"{name} must be a positive integer, got {value!r}")
    if dp == "auto":
        if world % (tp * fsdp):
            raise ConfigError("train.mesh", f"world size {world} is not a multiple of "
                                            f"tp {tp} x fsdp {fsdp}")
        dp = world // (tp * fsdp)
    shape = MeshShape(int(dp), fsdp, tp)
    if shape.world != world:
        raise ConfigError("train.mesh", f"world size {world} is not dp {dp} x fsdp {fsdp} x tp {tp} "
                                        f"= {shape.world}")
    return shape


def build_mesh(shape: MeshShape, device_type: str) -> DeviceMesh:
    """A 3-D mesh (dp, fsdp, tp); tp is innermost so each TP group is contiguous ranks (one node)."""
    return init_device_mesh(device_type, (shape.dp, shape.fsdp, shape.tp), mesh_dim_names=MESH_DIMS)
