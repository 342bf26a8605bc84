"""Sharded checkpoints with torch.distributed.checkpoint (DCP), written atomically.

Each rank writes its own shards; DCP de-duplicates replicated tensors. D-CHAG's private
partition encoders live under per-partition keys (front.partitions.<i>.*), so the
checkpoint holds them per TP index, and loading at another TP size simply asks for the
partitions the new rank owns. meta.json records the model fingerprint, step and mesh.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from ..io import InputError
from .mesh import is_main

META = "meta.json"
STEP_PREFIX = "step_"


class CheckpointError(InputError):
    """A checkpoint that is missing, incomplete or from another architecture."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(path: str | Path, model: nn.Module, optimizer=None, meta: dict | None = None) -> Path:
    """Write model (and optimizer) state to `path` via a temporary sibling; collective over all ranks."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if is_main():
        (tmp / META).write_text(json.dumps({**(meta or {}), "has_optimizer": optimizer is not None},
                                           indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    _barrier()
    return path


def read_meta(path: str | Path) -> dict:
    """meta.json of a checkpoint; CheckpointError if the checkpoint is absent or incomplete."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file() or not (path / ".metadata").is_file():
        raise CheckpointError(path, "not a complete checkpoint (meta.json or DCP .metadata missing)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(meta_path, f"unreadable checkpoint metadata: {err}") from None


def check_architecture(path: str | Path, meta: dict, spec_dict: dict, fingerprint: str) -> None:
    """CheckpointError naming the differing model settings if the checkpoint is another architecture."""
    if meta.get("fingerprint") == fingerprint:
        return
    saved = meta.get("spec", {})
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {spec_dict.get(k)!r}"
             for k in sorted(set(saved) | set(spec_dict)) if saved.get(k) != spec_dict.get(k)]
    raise CheckpointError(path, "checkpoint is from another architecture (" +
                          ("; ".join(diffs) or "fingerprint differs") + ")")


def load_checkpoint(path: str | Path, model: nn.Module, optimizer=None, *, spec_dict: dict,
                    fingerprint: str) -> dict:
    """Load a checkpoint into an (already parallelized) model and optimizer; return its meta."""
    meta = read_meta(path)
    check_architecture(path, meta, spec_dict, fingerprint)
    if optimizer is not None and meta.get("has_optimizer"):
        model_sd, optim_sd = get_state_dict(model, optimizer)
        # Only the per-parameter state (keyed by parameter name) is read back: how parameters
        # are grouped depends on the mesh (foreach groups DTensors apart), and the groups'
        # settings come from the config, which the run fingerprint keeps equal.
        state = {"model": model_sd, "optim": {"state": optim_sd["state"]}}
        dcp.load(state, checkpoint_id=str(path))
        optim_sd["state"] = state["optim"]["state"]
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=optim_sd)
    else:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
    return meta


def step_dir(root: str | Path, step: int) -> Path:
    """Directory of the checkpoint taken after `step` optimizer steps."""
    return Path(root) / f"{STEP_PREFIX}{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete step checkpoint under root, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob(f"{STEP_PREFIX}*") if (p / META).is_file())
    return done[-1] if done else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` step checkpoints (rank 0 only)."""
    if not is_main():
        return
    done = sorted(Path(root).glob(f"{STEP_PREFIX}*"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
