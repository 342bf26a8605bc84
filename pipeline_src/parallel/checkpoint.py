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
import threading
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


def _state(model: nn.Module, optimizer=None) -> dict:
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optim": optim_sd}
    return {"model": get_model_state_dict(model)}


def _partial(path: Path) -> Path:
    """The temporary sibling a checkpoint is written to; it becomes `path` once complete."""
    tmp = path.with_name(f".{path.name}.partial")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    return tmp


def _commit(tmp: Path, path: Path, meta: dict | None, has_optimizer: bool) -> None:
    """Every rank has written its shards into tmp: rank 0 adds meta.json and renames it to path."""
    _barrier()
    if is_main():
        (tmp / META).write_text(json.dumps({**(meta or {}), "has_optimizer": has_optimizer}, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    _barrier()


def save_checkpoint(path: str | Path, model: nn.Module, optimizer=None, meta: dict | None = None) -> Path:
    """Write model (and optimizer) state to `path` via a temporary sibling; collective over all ranks."""
    path = Path(path)
    tmp = _partial(path)
    dcp.save(_state(model, optimizer), checkpoint_id=str(tmp))
    _commit(tmp, path, meta, optimizer is not None)
    return path


class StepCheckpoints:
    """The step checkpoints of one run: saved synchronously or in the background, pruned off the
    training path.

    With asynchronous=True a save copies the state to host memory (DCP async_save), writes it
    in a background thread over its own gloo process group, and is committed (meta.json, the
    rename from .partial) only once every rank has finished: `commit_if(all_done)` at a host
    sync, or `wait()`. Until then the previous checkpoint stays the latest, so a crash in the
    middle of a save resumes from it. At most one save is in flight. Old checkpoints are renamed
    out of the way by rank 0 after a barrier (every rank has committed the newer one) and
    deleted by a background thread, so a slow parallel file system does not hold the step loop.
    """

    def __init__(self, root: str | Path, keep: int, asynchronous: bool = False):
        self.root, self.keep, self.asynchronous = Path(root), keep, asynchronous
        self.group = dist.new_group(backend="gloo") if asynchronous and dist.is_initialized() else None
        self._pending = None  # (future, tmp, path, meta, has_optimizer)
        self._deleter: threading.Thread | None = None

    def save(self, step: int, model: nn.Module, optimizer, meta: dict) -> None:
        """Checkpoint after `step` optimizer steps (collective); asynchronous saves return once staged."""
        self.wait()
        path = step_dir(self.root, step)
        tmp = _partial(path)
        state = _state(model, optimizer)
        if not self.asynchronous:
            dcp.save(state, checkpoint_id=str(tmp))
            self._finish(tmp, path, meta, optimizer is not None)
            return
        future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self.group)
        self._pending = (future, tmp, path, meta, optimizer is not None)

    def written_here(self) -> bool:
        """True when this rank has no save in flight or has finished writing its shards."""
        return self._pending is None or self._pending[0].done()

    def commit_if(self, all_written: bool) -> None:
        """Commit the save in flight when every rank reported it written (agreed at a host sync)."""
        if self._pending is not None and all_written:
            self.wait()

    def wait(self) -> None:
        """Finish and commit the save in flight, if any (collective)."""
        if self._pending is None:
            return
        future, tmp, path, meta, has_optimizer = self._pending
        self._pending = None
        future.result()
        self._finish(tmp, path, meta, has_optimizer)

    def _finish(self, tmp: Path, path: Path, meta: dict, has_optimizer: bool) -> None:
        _commit(tmp, path, meta, has_optimizer)
        self._prune()

    def _prune(self) -> None:
        """Rank 0: move all but the newest `keep` step checkpoints aside and delete them in the background."""
        if not is_main():
            return
        done = sorted(self.root.glob(f"{STEP_PREFIX}*"))
        old = done[:-self.keep] if self.keep > 0 else []
        trash = []
        for path in old:
            aside = path.with_name(f".{path.name}.deleting")
            os.replace(path, aside)
            trash.append(aside)
        if trash:
            self._join_deleter()
            self._deleter = threading.Thread(target=lambda: [shutil.rmtree(p, ignore_errors=True) for p in trash],
                                             name="checkpoint-prune", daemon=True)
            self._deleter.start()

    def _join_deleter(self) -> None:
        if self._deleter is not None:
            self._deleter.join()
            self._deleter = None

    def close(self) -> None:
        """Commit what is in flight and let the deletions finish."""
        self.wait()
        self._join_deleter()


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
