"""The distributed training loop: build, parallelize, resume, step, checkpoint, log.

One function, run_training(job), is what every rank executes (under torchrun, srun, or
torch.multiprocessing in tests). Rank 0 logs to MLflow and shows the progress bar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .. import tracking
from ..io import ConfigError, atomic_path, write_json
from ..model.build import ModelSpec, check_spec
from ..parallel import checkpoint as ckpt
from ..parallel.mesh import (build_mesh, check_world, init_distributed, is_main, launch_env, pick_device,
                             resolve_mesh)
from ..parallel.walltime import job_end_time
from ..parallel.plans import data_parallel_rank
from ..datasets.era5 import ERA5Forecast
from ..datasets.loader import step_loader
from ..datasets.spectral import Augment, SpectralTiles, SyntheticSpectralTiles
from .engine import build_engine
from .losses import forecast_loss, latitude_weights
from .mae import MaeTraining, heldout_verdict
from ..model.mae_objective import REFERENCES
from .schedule import learning_rate

log = logging.getLogger(__name__)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping settings of one training run."""

    steps: int = 60
    micro_batch: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16
    activation_checkpointing: str = "none"  # none | blocks | full
    sequence_parallel: bool = False
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    checkpoint_async: bool = False  # write step checkpoints in the background (DCP async_save)
    log_every: int = 5  # also how often the host syncs: loss check, stop agreement, progress
    seed: int = 0
    tp: int = 1
    fsdp: int = 1
    dp: int | str = "auto"
    expected_world: int | None = None  # train.nproc: refuse to start with another number of ranks
    walltime_margin_s: float = 180.0  # checkpoint and stop this long before the Slurm time limit
    loader_workers: int = 1  # DataLoader worker processes per rank (0 = read in the training process)
    prefetch: int = 4  # micro-batches each worker reads ahead
    data_cache_mb: int = 1024  # hold a rank's ERA5 channels in memory up to this size, else read per step


# Not part of what makes two runs the same run (the resume folder's key): a run may be
# resumed on another mesh, by another launcher, with another margin.
LAUNCH_SETTINGS = ("tp", "fsdp", "dp", "expected_world", "walltime_margin_s", "loader_workers", "prefetch",
                   "checkpoint_async", "data_cache_mb")


@dataclass
class TrainJob:
    """One model variant to train: task, model settings, data, paths and tracking."""

    name: str
    task: str  # forecast | mae
    model: dict  # arch, dim, depth, heads, agg_heads, mlp_ratio, patch, partitions, tree, decoder_depth
    settings: TrainSettings
    run_dir: Path
    final_dir: Path
    summary_path: Path
    data: dict = field(default_factory=dict)
    mlflow: dict = field(default_factory=lambda: {"enabled": False})
    rule: str | None = None
    plot_path: Path | None = None


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 or near its time limit after saving a checkpoint; rerun to resume."""

    mlflow_status = "KILLED"  # the MLflow run stays open for the attempt that resumes it


def _open_data(job: TrainJob):
    if job.task == "forecast":
        d = job.data
        return ERA5Forecast(d["assembled"], "train", d["targets"], d["lead_days"], d.get("space", "anomaly"),
                            cache_bytes=job.settings.data_cache_mb * 2**20)
    d = job.data
    if d.get("source") == "hyperspectral":
        return SpectralTiles(d["store"])
    return SyntheticSpectralTiles(d["bands"], tuple(d["image"]), d.get("seed", 0))


def model_spec(job: TrainJob, data, tp: int) -> ModelSpec:
    """The model spec from the job's model settings and the data's channels and grid."""
    m = job.model
    partitions = m.get("partitions", "auto")
    if partitions == "auto":
        partitions = tp
    common = dict(arch=m["arch"], task=job.task, patch=m["patch"], dim=m["dim"], depth=m["depth"],
                  heads=m["heads"], agg_heads=m["agg_heads"], mlp_ratio=float(m["mlp_ratio"]),
                  partitions=1 if m["arch"] == "tp-baseline" else int(partitions),
                  tree=tuple(m.get("tree", ())), decoder_depth=m.get("decoder_depth", 1),
                  pool_sharing=m.get("pool_sharing", "partition"))
    if job.task == "forecast":
        return ModelSpec(channels=len(data.channels), image=data.image, outputs=len(data.targets),
                         channel_names=tuple(data.channels), **common)
    return ModelSpec(channels=data.bands, image=data.image,
                     decoder_slopes=tuple(float(v) for v in m.get("decoder_slopes", ())), **common)


def run_fingerprint(spec: ModelSpec, s: TrainSettings, data: dict) -> str:
    """Hash of what makes two runs the same run (the mesh excluded): names the resume folder.

    The D-CHAG partitions are left out too: with model.partitions auto they follow train.mesh.tp,
    and a run resumed on another mesh must find its checkpoints and be told, by the checkpoint's
    architecture check, that the partitions differ (instead of silently starting anew).
    """
    settings = {k: v for k, v in vars(s).items() if k not in LAUNCH_SETTINGS}
    model = {k: v for k, v in spec.to_dict().items() if k != "partitions"}
    blob = json.dumps({"spec": model, "settings": settings, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _resume(job: TrainJob, latest: Path, model, optimizer, spec: ModelSpec, tp: int) -> dict:
    """Load the run's latest checkpoint; a changed partition count is refused with what to do."""
    try:
        return ckpt.load_checkpoint(latest, model, optimizer, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    except ckpt.CheckpointError as err:
        saved = ckpt.read_meta(latest).get("spec", {}).get("partitions")
        if saved is None or saved == spec.partitions:
            raise
        configured = job.model.get("partitions", "auto")
        why = (f"model.partitions auto follows train.mesh.tp, now {tp}: pin model.partitions: {saved} to resume "
               f"this run on the new mesh (DCP reshards it; tp must divide {saved})" if configured == "auto" else
               f"model.partitions is now {configured}: set it back to {saved} to resume this run")
        raise ckpt.CheckpointError(latest, f"{err.problem}; {why}, or remove {latest.parent} to start "
                                           f"anew") from None


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm preemption / time limit warning) or, on rank 0, by the
    approaching end of the Slurm allocation; agreed on across ranks."""

    def __init__(self, deadline: float | None = None):
        self.raised = False
        self.deadline = deadline  # epoch seconds after which rank 0 stops (end time - margin)
        self.reason = "stop signal received"
        self._old = {}

    def __enter__(self):
        for sig in PREEMPT_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def local(self) -> float:
        """1.0 if this rank received a stop signal or (rank 0) saw the deadline pass, else 0.0."""
        if self.deadline is not None and not self.raised and time.time() >= self.deadline:
            self.raised = True
            self.reason = "the Slurm time limit is near"
        return 1.0 if self.raised else 0.0


def _loss(job: TrainJob, model, batch, mae: MaeTraining | None, lat_w, device, autocast):
    """(loss, extras): the MAE's extras are its trivial references on the same batch."""
    if mae is not None:
        return mae.loss(model, batch, device, autocast)
    with autocast():
        pred = model(batch.x.to(device), batch.lead_days.to(device))
    return forecast_loss(pred.float(), batch.y.to(device), lat_w), torch.zeros(0, device=device)


class _Fetch:
    """fetch(step, micro) -> this rank's micro-batch; a D-CHAG forecaster's rank reads only its
    partitions' input channels (the baseline, and the MAE whose targets are every band, read all)."""

    def __init__(self, job: TrainJob, data, spec: ModelSpec, model, seed: int, global_batch: int, rows: slice):
        self.data, self.task, self.seed, self.global_batch, self.rows = data, job.task, seed, global_batch, rows
        self.mask_ratio, self.patch = job.data.get("mask_ratio"), spec.patch
        self.sampling = job.data.get("sampling", "uniform")
        self.augment = Augment.from_config(job.data.get("augment"))
        front = getattr(model, "front", None)
        span = front.input_span() if hasattr(front, "input_span") else None
        self.channels = slice(*span) if span is not None and span != (0, spec.channels) else None
        if self.task == "forecast":
            data.use_inputs(self.channels)  # nothing else is read from disk or cached

    def __call__(self, step: int, micro: int):
        if self.task == "forecast":
            return self.data.batch(self.seed, step, micro, self.global_batch, self.rows, self.channels)
        return self.data.batch(self.seed, step, micro, self.global_batch, self.rows, self.mask_ratio, self.patch,
                               self.sampling, self.augment)


def _sync(pending: list, stop: _StopFlag, checkpoints: ckpt.StepCheckpoints,
          device) -> tuple[list[list[float]], list[float], bool, bool]:
    """One host sync for the steps since the last: per step its loss and extras averaged over all
    ranks, the grad norms, whether any rank must stop, and whether every rank has written its part
    of the checkpoint in flight (both agreed by all, in the same all-reduce)."""
    per_step = torch.stack([torch.cat([p[0].reshape(1), p[3]]) for p in pending])  # (steps, 1 + extras)
    width = per_step.shape[1]
    flags = [stop.local(), 0.0 if checkpoints.written_here() else 1.0]
    reduced = torch.cat([per_step.reshape(-1), torch.tensor(flags, device=device)])
    if dist.is_initialized():
        dist.all_reduce(reduced)
        reduced[:-2] /= dist.get_world_size()
    stop_now, all_written = float(reduced[-2]) > 0, float(reduced[-1]) == 0
    rows = reduced[:-2].reshape(-1, width).tolist()
    return rows, torch.stack([p[1] for p in pending]).float().tolist(), stop_now, all_written


def run_training(job: TrainJob, on_step: Callable[[int], None] | None = None) -> dict:
    """Train job on this rank (all ranks call it); return the summary. Raises Preempted on a stop signal."""
    s = job.settings
    env = launch_env()
    check_world(env, s.expected_world, "train.nproc")
    device = pick_device(env.local_rank)
    init_distributed(env, device)
    shape = resolve_mesh(env.world_size, s.tp, s.fsdp, s.dp)
    mesh = build_mesh(shape, device.type)
    data = _open_data(job)
    spec = model_spec(job, data, s.tp)
    try:
        check_spec(spec)
    except ValueError as err:
        raise ConfigError(f"train.variants[{job.name}]", str(err)) from None
    engine = build_engine(spec, mesh, device, s, seed=s.seed)
    model, par, optimizer, total_params = engine.model, engine.par, engine.optimizer, engine.total_params
    shard, shards = data_parallel_rank(mesh)
    global_batch = s.micro_batch * shards
    rows = slice(shard * s.micro_batch, (shard + 1) * s.micro_batch)
    lat_w = latitude_weights(data.latitudes).to(device) if job.task == "forecast" else None
    mae = MaeTraining(job.data, spec.patch) if job.task == "mae" else None
    extras = REFERENCES if mae is not None else ()

    meta = {"fingerprint": spec.fingerprint(), "spec": spec.to_dict(), "variant": job.name,
            "task": job.task, "mesh": {"dp": shape.dp, "fsdp": shape.fsdp, "tp": shape.tp}}
    if job.task == "forecast":  # evaluation undoes exactly this transform
        meta["transform"] = data.transform.to_dict()
        meta["lead_days"] = data.lead_days
    else:
        meta["mask_ratio"] = job.data["mask_ratio"]
        meta["objective"] = {"loss": job.data.get("loss", "plant"), "norm_pix": bool(job.data.get("norm_pix", False))}
    # Resume only the same run: same architecture, optimisation settings and data. The mesh
    # is left out on purpose, since DCP reshards a checkpoint to another world size.
    run_key = run_fingerprint(spec, s, job.data)
    ckpt_root = Path(job.run_dir) / "checkpoints" / run_key
    checkpoints = ckpt.StepCheckpoints(ckpt_root, s.keep_checkpoints, s.checkpoint_async)
    others = [p.name for p in ckpt_root.parent.glob("*") if p.is_dir() and p.name != run_key]
    if others and is_main():
        log.warning("%s: checkpoints of other configurations in %s are not resumed: %s",
                    job.name, ckpt_root.parent, ", ".join(sorted(others)))
    start, history = 0, []
    latest = ckpt.latest_checkpoint(ckpt_root)
    if latest is not None:
        loaded = _resume(job, latest, model, optimizer, spec, s.tp)
        start = int(loaded["step"])
        history = list(loaded.get("history", []))
        log.info("resumed %s from %s (step %d)", job.name, latest, start)

    params = {"variant": job.name, "task": job.task, **{f"model.{k}": v for k, v in spec.to_dict().items()
                                                       if k != "channel_names"},
              **{f"train.{k}": v for k, v in vars(s).items()}, "world_size": env.world_size,
              "launcher": env.launcher, "device": device.type, "parameters": total_params}
    if mae is not None:  # the objective and data choices of the MAE
        augment = Augment.from_config(job.data.get("augment"))
        choices = ("mask_ratio", "loss", "norm_pix", "sampling", "heldout_draws")
        params.update({f"mae.{k}": job.data.get(k) for k in choices},
                      **{"mae.augment.flips": augment.flips, "mae.augment.shift": augment.shift})
    end = job_end_time() if is_main() else None
    deadline = end - s.walltime_margin_s if end is not None else None
    if deadline is not None:
        log.info("%s: Slurm time limit in %.0f s; stopping with a checkpoint %.0f s before it",
                 job.name, end - time.time(), s.walltime_margin_s)
    # keyed by the run fingerprint: an attempt that resumes this run continues its MLflow run
    with tracking.stage_run(job.mlflow, "train", job.rule or "train", params,
                            key=f"train-{job.name}-{run_key}", wildcards={"variant": job.name}) as run, _StopFlag(deadline) as stop:
        run.set_tags({"resumed_from_step": start, "train_run_key": run_key})
        progress = _progress(is_main(), start, s.steps, job.name)
        t_last, samples_since, pending, pending_heldout = time.perf_counter(), 0, [], {}
        batches = iter(step_loader(_Fetch(job, data, spec, model, s.seed, global_batch, rows), start, s.steps,
                                   s.grad_accum, s.loader_workers, s.prefetch))
        for step in range(start, s.steps):
            lr = learning_rate(step, s.lr, s.warmup_steps, s.steps, s.min_lr_ratio)
            loss_sum = torch.zeros((), device=device)
            extra_sum = torch.zeros(len(extras), device=device)
            for micro in range(s.grad_accum):
                if par.fsdp:
                    model.set_requires_gradient_sync(micro == s.grad_accum - 1)
                batch = next(batches)
                loss, extra = _loss(job, model, batch, mae, lat_w, device, engine.autocast)
                (loss / s.grad_accum).backward()
                loss_sum += loss.detach() / s.grad_accum
                extra_sum += extra.detach() / s.grad_accum
            norm = engine.step(lr, s.grad_clip)
            samples_since += global_batch * s.grad_accum
            done = step + 1
            pending.append((loss_sum, norm, lr, extra_sum))
            heldout = mae.score_heldout(model, spec, device, engine.autocast) if mae and mae.due(done, s.steps) else None
            if on_step is not None:
                on_step(done)
            at_checkpoint = s.checkpoint_every and done % s.checkpoint_every == 0 and done < s.steps
            if heldout is not None:
                pending_heldout[done] = heldout
            if not (done % s.log_every == 0 or done == s.steps or at_checkpoint):
                continue  # no host sync on this step
            rows, norms, stop_now, all_written = _sync(pending, stop, checkpoints, device)
            checkpoints.commit_if(all_written)
            first = done - len(pending) + 1
            for i, (row, norm_value, (_, _, step_lr, _)) in enumerate(zip(rows, norms, pending)):
                if not math.isfinite(row[0]):
                    raise FloatingPointError(f"{job.name}: loss is {row[0]} at step {first + i}")
                record = {"step": first + i, "loss": row[0], "lr": step_lr, "grad_norm": norm_value,
                          **dict(zip(extras, row[1:])), **pending_heldout.pop(first + i, {})}
                history.append(record)
            now = time.perf_counter()
            history[-1]["samples_per_s"] = samples_since / (now - t_last)
            t_last, samples_since = now, 0
            for record in history[-len(pending):]:
                run.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            progress.update(len(pending))
            progress.set_postfix(loss=f"{rows[-1][0]:.4f}", lr=f"{lr:.2e}")
            pending = []
            if at_checkpoint or stop_now:
                checkpoints.save(done, model, optimizer, {**meta, "step": done, "history": list(history)})
            if stop_now:
                checkpoints.close()  # committed before the job ends
                progress.close()
                run.set_tags({"preempted_at_step": str(done)})
                raise Preempted(f"{job.name}: {stop.reason}; checkpoint at step {done} in "
                                f"{ckpt_root}; rerun the same command to resume")
        progress.close()
        checkpoints.close()
        ckpt.save_checkpoint(job.final_dir, model, None, {**meta, "step": s.steps})
        peaks = _gather_objects(_peak_memory_mb(device))
        summary = {"variant": job.name, "task": job.task, "steps": s.steps, "resumed_from_step": start,
                   "final_loss": history[-1]["loss"] if history else None,
                   "history": history, "peak_memory_mb_per_rank": peaks,
                   "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
                   "world_size": env.world_size, "mesh": meta["mesh"], "parameters": total_params,
                   "fingerprint": spec.fingerprint(), "checkpoint": str(job.final_dir),
                   "resume_folder": str(ckpt_root)}
        rates = [h["samples_per_s"] for h in history if "samples_per_s" in h]
        summary["samples_per_s"] = sum(rates) / len(rates) if rates else None
        scored = [h for h in history if "heldout_loss" in h]
        if scored:  # the MAE's held-out verdict: final loss against the best trivial reference
            summary["heldout"] = heldout_verdict(scored[-1])
        if is_main():
            run.log_metrics({f"peak_memory_mb_rank{r}": v for r, v in enumerate(peaks)})
            run.log_params({"final_checkpoint": str(job.final_dir)})
            if job.plot_path is not None:
                _plot_loss(history, job.plot_path, job.name)
                run.log_artifact(job.plot_path)
            write_json(job.summary_path, summary)
            run.log_artifact(job.summary_path)
    if hasattr(data, "close"):
        data.close()
    return summary


def _gather_objects(value) -> list:
    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _progress(enabled: bool, start: int, total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=f"train {name}", disable=not enabled,
                unit="step", dynamic_ncols=True, mininterval=1.0)


def _plot_loss(history: list[dict], path: Path, name: str) -> None:
    """Training loss per step; for the MAE also its trivial references and the held-out curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], color="C0", lw=1, alpha=0.6, label="train loss")
    for key, color in (("ref_zero", "C1"), ("ref_visible_mean", "C2"), ("ref_local_mean", "C3")):
        if key in history[0]:
            ax.plot(steps, [h[key] for h in history], color=color, lw=0.8, alpha=0.35,
                    label=f"train {key.replace('ref_', 'predict ').replace('_', ' ')}")
    scored = [h for h in history if "heldout_loss" in h]
    for key, color, style in (("heldout_loss", "C0", "-"), ("heldout_ref_zero", "C1", "--"),
                              ("heldout_ref_visible_mean", "C2", "--"), ("heldout_ref_local_mean", "C3", "--")):
        if scored:
            ax.plot([h["step"] for h in scored], [h[key] for h in scored], color=color, ls=style, lw=2,
                    marker="o", ms=3, label=key.replace("heldout_", "held-out ").replace("_", " "))
    ylabel = "masked plant-pixel MSE (normalised)" if scored or "ref_zero" in history[0] else "training loss"
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=name)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
