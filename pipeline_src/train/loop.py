"""The distributed training loop: set up, resume, step, sync and log, checkpoint, finish.

run_training(job) is what every rank executes (under torchrun, srun, or torch.multiprocessing
in tests), in small pieces: _setup (mesh, task and data, model, optimizer), _resume,
_train_step, _sync (one host sync: losses, stop agreement, async checkpoint completion),
StepCheckpoints (parallel/checkpoint.py) and _finish. What differs between forecasting and
the masked autoencoder lives in train/tasks.py. Rank 0 logs to MLflow and shows the progress bar.
"""

from __future__ import annotations

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
from ..parallel.hpc_env import report_communication
from ..parallel.walltime import job_end_time
from ..parallel.plans import data_parallel_rank
from ..datasets.loader import step_loader
from .engine import build_engine
from .schedule import learning_rate
from .settings import (Checkpointing, ForecastData, MaeData, ModelSettings, Optimisation, Parallelism, Runtime,
                       run_fingerprint)
from .tasks import TASKS

log = logging.getLogger(__name__)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class TrainJob:
    """One model variant to train: task, its typed settings sections (train/settings.py), paths, tracking."""

    name: str
    task: str  # forecast | mae
    model: ModelSettings
    optim: Optimisation
    data: ForecastData | MaeData
    run_dir: Path
    final_dir: Path
    summary_path: Path
    parallel: Parallelism = field(default_factory=Parallelism)
    checkpoint: Checkpointing = field(default_factory=Checkpointing)
    runtime: Runtime = field(default_factory=Runtime)
    mlflow: dict = field(default_factory=lambda: {"enabled": False})
    rule: str | None = None
    plot_path: Path | None = None

    def sections(self) -> dict:
        """Every settings section by name (the fingerprint hashes those that define the run)."""
        return {"model": self.model, "optim": self.optim, "data": self.data, "parallel": self.parallel,
                "checkpoint": self.checkpoint, "runtime": self.runtime}


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 or near its time limit after saving a checkpoint; rerun to resume."""

    mlflow_status = "KILLED"  # the MLflow run stays open for the attempt that resumes it


def model_spec(job: TrainJob, task, tp: int) -> ModelSpec:
    """The model spec from the job's model settings and what the task's data decides."""
    m = job.model
    partitions = tp if m.partitions == "auto" else int(m.partitions)
    return ModelSpec(arch=m.arch, task=job.task, patch=m.patch, dim=m.dim, depth=m.depth, heads=m.heads,
                     agg_heads=m.agg_heads, mlp_ratio=float(m.mlp_ratio),
                     partitions=1 if m.arch == "tp-baseline" else partitions, tree=m.tree,
                     decoder_depth=m.decoder_depth, pool_sharing=m.pool_sharing, **task.spec_fields())


def _resume(job: TrainJob, latest: Path, model, optimizer, spec: ModelSpec, tp: int) -> dict:
    """Load the run's latest checkpoint; a changed partition count is refused with what to do."""
    try:
        return ckpt.load_checkpoint(latest, model, optimizer, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    except ckpt.CheckpointError as err:
        saved = ckpt.read_meta(latest).get("spec", {}).get("partitions")
        if saved is None or saved == spec.partitions:
            raise
        configured = job.model.partitions
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


@dataclass
class _Setup:
    """One rank's training set-up: launch, mesh, task and data, model, optimizer, batch layout."""

    env: object
    device: torch.device
    shape: object
    task: object
    spec: ModelSpec
    engine: object
    global_batch: int
    rows: slice
    meta: dict


def _setup(job: TrainJob) -> _Setup:
    """Start the process group and mesh, open the task's data, build and parallelize the model."""
    o, p = job.optim, job.parallel
    env = launch_env()
    check_world(env, p.expected_world, "train.nproc")
    device = pick_device(env.local_rank)
    init_distributed(env, device)
    shape = resolve_mesh(env.world_size, p.tp, p.fsdp, p.dp)
    mesh = build_mesh(shape, device.type)
    task = TASKS[job.task](job)
    spec = model_spec(job, task, p.tp)
    try:
        check_spec(spec)
    except ValueError as err:
        raise ConfigError(f"train.variants[{job.name}]", str(err)) from None
    engine = build_engine(spec, mesh, device, seed=o.seed, precision=o.precision, lr=o.lr,
                          weight_decay=o.weight_decay, recompute=p.activation_checkpointing,
                          sequence_parallel=p.sequence_parallel)
    front = getattr(engine.model, "front", None)
    task.prepare(spec, front.input_span() if hasattr(front, "input_span") else None, device)
    shard, shards = data_parallel_rank(mesh)
    meta = {"fingerprint": spec.fingerprint(), "spec": spec.to_dict(), "variant": job.name, "task": job.task,
            "mesh": {"dp": shape.dp, "fsdp": shape.fsdp, "tp": shape.tp}, **task.meta()}
    return _Setup(env, device, shape, task, spec, engine, o.micro_batch * shards,
                  slice(shard * o.micro_batch, (shard + 1) * o.micro_batch), meta)


def _train_step(job: TrainJob, st: _Setup, batches, lr: float):
    """One optimizer step over grad_accum micro-batches: (mean loss, mean extras, grad norm), on device."""
    s, engine, model = job.optim, st.engine, st.engine.model
    loss_sum = torch.zeros((), device=st.device)
    extra_sum = torch.zeros(len(st.task.extras), device=st.device)
    for micro in range(s.grad_accum):
        if engine.par.fsdp:
            model.set_requires_gradient_sync(micro == s.grad_accum - 1)
        loss, extra = st.task.loss(model, next(batches), st.device, engine.autocast)
        (loss / s.grad_accum).backward()
        loss_sum += loss.detach() / s.grad_accum
        extra_sum += extra.detach() / s.grad_accum
    return loss_sum, extra_sum, engine.step(lr, s.grad_clip)


def _records(job: TrainJob, st: _Setup, rows, norms, pending: list, heldout: dict, first: int) -> list[dict]:
    """History records of the synced steps; FloatingPointError on a non-finite loss."""
    out = []
    for i, (row, norm_value, (_, _, step_lr, _)) in enumerate(zip(rows, norms, pending)):
        if not math.isfinite(row[0]):
            raise FloatingPointError(f"{job.name}: loss is {row[0]} at step {first + i}")
        out.append({"step": first + i, "loss": row[0], "lr": step_lr, "grad_norm": norm_value,
                    **dict(zip(st.task.extras, row[1:])), **heldout.pop(first + i, {})})
    return out


def _deadline(job: TrainJob) -> float | None:
    """Epoch seconds at which rank 0 stops with a checkpoint (the Slurm end less the margin), or None."""
    end = job_end_time() if is_main() else None
    if end is None:
        return None
    log.info("%s: Slurm time limit in %.0f s; stopping with a checkpoint %.0f s before it",
             job.name, end - time.time(), job.checkpoint.walltime_margin_s)
    return end - job.checkpoint.walltime_margin_s


def run_training(job: TrainJob, on_step: Callable[[int], None] | None = None) -> dict:
    """Train job on this rank (all ranks call it); return the summary. Raises Preempted on a stop signal."""
    s, c, r = job.optim, job.checkpoint, job.runtime
    st = _setup(job)
    spec, model, optimizer = st.spec, st.engine.model, st.engine.optimizer
    # Resume only the same run: the sections that define it (model, optimisation, data). The
    # mesh is left out on purpose, since DCP reshards a checkpoint to another world size.
    run_key = run_fingerprint(job.sections())
    ckpt_root = Path(job.run_dir) / "checkpoints" / run_key
    checkpoints = ckpt.StepCheckpoints(ckpt_root, c.keep_checkpoints, c.checkpoint_async)
    others = [p.name for p in ckpt_root.parent.glob("*") if p.is_dir() and p.name != run_key]
    if others and is_main():
        log.warning("%s: checkpoints of other configurations in %s are not resumed: %s",
                    job.name, ckpt_root.parent, ", ".join(sorted(others)))
    start, history = 0, []
    latest = ckpt.latest_checkpoint(ckpt_root)
    if latest is not None:
        loaded = _resume(job, latest, model, optimizer, spec, job.parallel.tp)
        start = int(loaded["step"])
        history = list(loaded.get("history", []))
        log.info("resumed %s from %s (step %d)", job.name, latest, start)

    params = {"variant": job.name, "task": job.task, **{f"model.{k}": v for k, v in spec.to_dict().items()
                                                       if k != "channel_names"},
              **{f"train.{k}": v for name, sec in job.sections().items() if name not in ("model", "data")
                 for k, v in vars(sec).items()}, "world_size": st.env.world_size,
              "launcher": st.env.launcher, "device": st.device.type, "parameters": st.engine.total_params,
              **st.task.params()}
    # keyed by the run fingerprint: an attempt that resumes this run continues its MLflow run
    with tracking.stage_run(job.mlflow, "train", job.rule or "train", params, key=f"train-{job.name}-{run_key}",
                            wildcards={"variant": job.name}) as run, _StopFlag(_deadline(job)) as stop:
        run.set_tags({"resumed_from_step": start, "train_run_key": run_key})
        if is_main():
            report_communication(run=run)  # versions, RCCL's network; warns on sockets
        progress = _progress(is_main(), start, s.steps, job.name)
        t_last, samples_since, pending, pending_heldout = time.perf_counter(), 0, [], {}
        batches = iter(step_loader(st.task.fetcher(s.seed, st.global_batch, st.rows), start, s.steps,
                                   s.grad_accum, r.loader_workers, r.prefetch))
        for step in range(start, s.steps):
            lr = learning_rate(step, s.lr, s.warmup_steps, s.steps, s.min_lr_ratio)
            loss_sum, extra_sum, norm = _train_step(job, st, batches, lr)
            samples_since += st.global_batch * s.grad_accum
            done = step + 1
            pending.append((loss_sum, norm, lr, extra_sum))
            heldout = st.task.heldout(model, spec, st.device, st.engine.autocast, done, s.steps)
            if on_step is not None:
                on_step(done)
            at_checkpoint = c.checkpoint_every and done % c.checkpoint_every == 0 and done < s.steps
            if heldout is not None:
                pending_heldout[done] = heldout
            if not (done % r.log_every == 0 or done == s.steps or at_checkpoint):
                continue  # no host sync on this step
            rows, norms, stop_now, all_written = _sync(pending, stop, checkpoints, st.device)
            checkpoints.commit_if(all_written)
            history += _records(job, st, rows, norms, pending, pending_heldout, done - len(pending) + 1)
            now = time.perf_counter()
            history[-1]["samples_per_s"] = samples_since / (now - t_last)
            t_last, samples_since = now, 0
            for record in history[-len(pending):]:
                run.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            progress.update(len(pending))
            progress.set_postfix(loss=f"{rows[-1][0]:.4f}", lr=f"{lr:.2e}")
            pending = []
            if at_checkpoint or stop_now:
                checkpoints.save(done, model, optimizer, {**st.meta, "step": done, "history": list(history)})
            if stop_now:
                checkpoints.close()  # committed before the job ends
                progress.close()
                run.set_tags({"preempted_at_step": str(done)})
                raise Preempted(f"{job.name}: {stop.reason}; checkpoint at step {done} in "
                                f"{ckpt_root}; rerun the same command to resume")
        progress.close()
        checkpoints.close()
        summary = _finish(job, st, run, history, start, ckpt_root)
    st.task.close()
    return summary


def _finish(job: TrainJob, st: _Setup, run, history: list[dict], start: int, ckpt_root: Path) -> dict:
    """Final checkpoint, summary.json, loss plot and MLflow records of a completed run."""
    s = job.optim
    ckpt.save_checkpoint(job.final_dir, st.engine.model, None, {**st.meta, "step": s.steps})
    peaks = _gather_objects(_peak_memory_mb(st.device))
    rates = [h["samples_per_s"] for h in history if "samples_per_s" in h]
    summary = {"variant": job.name, "task": job.task, "steps": s.steps, "resumed_from_step": start,
               "final_loss": history[-1]["loss"] if history else None,
               "history": history, "peak_memory_mb_per_rank": peaks,
               "memory_kind": "cuda_max_allocated" if st.device.type == "cuda" else "cpu_peak_rss",
               "world_size": st.env.world_size, "mesh": st.meta["mesh"], "parameters": st.engine.total_params,
               "fingerprint": st.spec.fingerprint(), "checkpoint": str(job.final_dir),
               "resume_folder": str(ckpt_root), "samples_per_s": sum(rates) / len(rates) if rates else None,
               **st.task.summary(history)}
    if is_main():
        run.log_metrics({f"peak_memory_mb_rank{r}": v for r, v in enumerate(peaks)})
        run.log_params({"final_checkpoint": str(job.final_dir)})
        if job.plot_path is not None:
            _plot_loss(history, job.plot_path, job.name)
            run.log_artifact(job.plot_path)
        write_json(job.summary_path, summary)
        run.log_artifact(job.summary_path)
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
