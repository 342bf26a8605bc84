"""Forecasts from a trained checkpoint over the test split, on every rank of an evaluation mesh.

The checkpoint is loaded into a model parallelized on the evaluation mesh (the training
mesh or any smaller one: DCP reshards). Initialisation times are dealt out to the
data-parallel shards; TP peers compute the same forecasts and only TP rank 0 of each shard
scores them. Every rank runs the same number of forward passes (FSDP and TP are
collective), padding with a discarded batch where its share is shorter. Forecasts are
turned back into physical units with the transform the checkpoint was trained with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import BASELINES
from ..datasets.era5 import Climatology, ERA5Split, FieldTransform
from ..io import InputError, read_json
from ..model.build import ModelSpec
from ..parallel import checkpoint as ckpt
from ..parallel.mesh import is_main
from .damping import damped_forecast
from .metrics import cell_area_weights
from .runtime import gather, load_parallel, progress, share, start
from .scoring import Scores

log = logging.getLogger(__name__)


class VerificationData:
    """The verification split with its climatology, units and the area weights."""

    def __init__(self, assembled: str | Path, split: str = "test"):
        assembled = Path(assembled)
        self.split = ERA5Split(assembled / f"{split}.zarr")
        self.climatology = Climatology(assembled / "climatology.zarr", self.split)
        manifest = read_json(assembled / "manifest.json")
        self.units = manifest.get("units", {})
        self.weights = cell_area_weights(self.split.latitudes)
        self.times = self.split.times

    def init_indices(self, lead_days: list[float], stride: int) -> tuple[list[int], list[int]]:
        """(initialisation indices whose valid time at every lead is in the split, lead steps)."""
        steps = [self.split.lead_steps(d) for d in lead_days]
        inits = list(range(0, len(self.times) - max(steps), stride))
        return inits, steps

    def target_indices(self, targets: list[str]) -> list[int]:
        """Channel indices of the targets; InputError naming the store when one is missing."""
        missing = [t for t in targets if t not in self.split.channels]
        if missing:
            raise InputError(self.split.store, f"target channels {missing} are not in the store")
        return [self.split.channels.index(t) for t in targets]

    def batch(self, inits: list[int], lead_steps: list[int], targets: list[int]):
        """Physical fields of a batch: init state (n, C, H, W), its climatology, and per lead
        (n, lead, V, H, W) truth and climatology at the valid times."""
        n, nl = len(inits), len(lead_steps)
        x = self.split.read(inits)
        clim_x = self.climatology.at(self.times[inits])
        valid = (np.asarray(inits)[:, None] + np.asarray(lead_steps)[None, :]).ravel()
        truth = self.split.read(valid)[:, targets]
        clim = self.climatology.at(self.times[valid])
        shape = (n, nl, len(targets), *truth.shape[-2:])
        return x, clim_x, truth.reshape(shape), clim[:, targets].reshape(shape), clim

    def close(self) -> None:
        """Release the stores."""
        self.split.close()
        self.climatology.close()


@dataclass
class ForecastEval:
    """One checkpoint to evaluate: where it is, the data, leads, thinning and the mesh."""

    checkpoint: Path
    assembled: Path
    lead_days: list[float]
    init_stride: int = 5
    batch: int = 8
    split: str = "test"
    tp: int = 1
    fsdp: int = 1
    dp: int | str = "auto"
    expected_world: int | None = None  # evaluate.nproc: refuse another number of ranks


def check_compatible(path: Path, meta: dict, data: VerificationData) -> tuple[ModelSpec, FieldTransform]:
    """The checkpoint's spec and transform; InputError when its channels or grid differ from the data."""
    if meta.get("task", meta.get("spec", {}).get("task")) != "forecast":
        raise InputError(path, "not a forecast checkpoint")
    if "transform" not in meta:
        raise InputError(path, "checkpoint has no field transform (trained before evaluation existed): retrain")
    spec = ModelSpec.from_dict(meta["spec"])
    transform = FieldTransform.from_dict(meta["transform"])
    if list(transform.channels) != data.split.channels:
        raise InputError(path, f"checkpoint was trained on channels {list(transform.channels)}; "
                               f"{data.split.store} has {data.split.channels}")
    if tuple(spec.image) != tuple(data.split.image):
        raise InputError(path, f"checkpoint was trained on a {spec.image[0]}x{spec.image[1]} grid; "
                               f"{data.split.store} is {data.split.image[0]}x{data.split.image[1]}")
    return spec, transform


@dataclass
class Forecasts:
    """The forecasts themselves, in physical units: (init, lead, target, lat, lon), sorted by init."""

    init_times: np.ndarray
    fields: np.ndarray
    lead_hours: list[int]
    targets: list[str]
    units: list[str]


def run_forecast_eval(job: ForecastEval) -> tuple[Scores | None, dict | None, VerificationData, Forecasts | None]:
    """Forecast and score every selected init on this rank's share; rank 0 returns the merged
    Scores, the first init's example fields and every forecast (other ranks return None)."""
    mesh, device = start(job.tp, job.fsdp, job.dp, job.expected_world)
    data = VerificationData(job.assembled, job.split)
    meta = ckpt.read_meta(job.checkpoint)
    spec, transform = check_compatible(Path(job.checkpoint), meta, data)
    inits, lead_steps = data.init_indices(job.lead_days, job.init_stride)
    model = load_parallel(job.checkpoint, spec, mesh, device)
    mine, n_batches, scoring = share(inits, mesh, job.batch)
    targets = transform.target_index
    scores = Scores(meta.get("variant", "model"), [round(d * 24) for d in job.lead_days],
                    list(transform.targets), [data.units.get(t, "") for t in transform.targets], data.weights)
    example, made = None, []
    leads = torch.tensor(job.lead_days, dtype=torch.float32)
    bar = progress(is_main(), n_batches, scores.system)
    with torch.no_grad():
        for b in range(n_batches):
            chunk = mine[b * job.batch:(b + 1) * job.batch]
            real = bool(chunk)
            chunk = chunk or inits[:1]  # a pass whose result is discarded keeps collectives in step
            x, clim_x, truth, clim, clim_full = data.batch(chunk, lead_steps, targets)
            n, nl = len(chunk), len(lead_steps)
            inputs = transform.encode_inputs(torch.from_numpy(x), torch.from_numpy(clim_x))
            inputs = inputs.repeat_interleave(nl, dim=0)  # (n * lead, C, H, W), init-major
            pred = model(inputs.to(device), leads.repeat(n).to(device)).float().cpu()
            fc = transform.decode_targets(pred, torch.from_numpy(clim_full)).numpy()
            fc = fc.reshape(truth.shape)
            if real and scoring:
                scores.add(data.times[chunk].values, fc, truth, clim)
                made.append((data.times[chunk].values, fc.astype(np.float32)))
                if inits[0] in chunk:
                    i = chunk.index(inits[0])
                    example = {"init_time": str(data.times[inits[0]]), "forecast": fc[i], "truth": truth[i]}
            bar.update(1)
    bar.close()
    states = gather((scores.state() if scoring else None, example, made))
    if not is_main():
        return None, None, data, None
    merged = Scores(scores.system, scores.lead_hours, scores.variables, scores.units, scores.weights)
    for state, ex, _ in states:
        if state is not None:
            merged.merge(state)
        example = example or ex
    times = np.concatenate([t for *_, parts in states for t, _ in parts])
    fields = np.concatenate([f for *_, parts in states for _, f in parts])
    order = np.argsort(times)
    forecasts = Forecasts(times[order], fields[order], scores.lead_hours, scores.variables, scores.units)
    return merged, example, data, forecasts


def baseline_scores(data: VerificationData, lead_days: list[float], stride: int, targets: list[str],
                    damping: np.ndarray, batch: int = 32) -> dict[str, Scores]:
    """Climatology, persistence and damped persistence (alpha (lead, target), evaluate/damping.py)
    scored on the same initialisation times as the models."""
    inits, lead_steps = data.init_indices(lead_days, stride)
    idx = data.target_indices(targets)
    hours = [round(d * 24) for d in lead_days]
    units = [data.units.get(t, "") for t in targets]
    scores = {name: Scores(name, hours, list(targets), units, data.weights) for name in BASELINES}
    for lo in range(0, len(inits), batch):
        chunk = inits[lo:lo + batch]
        x, clim_x, truth, clim, _ = data.batch(chunk, lead_steps, idx)
        persistence = np.broadcast_to(x[:, None, idx], truth.shape)
        damped = damped_forecast(x[:, idx], clim_x[:, idx], clim, damping)
        for name, fc in (("climatology", clim), ("persistence", persistence), ("damped_persistence", damped)):
            scores[name].add(data.times[chunk].values, fc, truth, clim)
    return scores
