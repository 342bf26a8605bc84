"""Worker functions run in spawned processes by the parallel tests (module level: picklable)."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from pipeline_src.model.arch import random_mask
from pipeline_src.model.build import ModelSpec, build_model
from pipeline_src.parallel.grads import grad_norm
from pipeline_src.parallel.mesh import build_mesh, init_distributed, launch_env, resolve_mesh
from pipeline_src.parallel.plans import data_parallel_rank, parallelize

BATCH = 4
SMALL = dict(channels=10, image=(8, 16), patch=4, dim=32, depth=2, heads=4, agg_heads=4,
             mlp_ratio=2.0, outputs=3, decoder_depth=1)


def exactness_specs() -> list[ModelSpec]:
    """The model variants every mesh is checked on."""
    return [
        ModelSpec(arch="tp-baseline", task="forecast", **SMALL),
        ModelSpec(arch="dchag-L", task="forecast", partitions=4, tree=(2,), **SMALL),
        ModelSpec(arch="dchag-C", task="forecast", partitions=4, tree=(2,), **SMALL),
        ModelSpec(arch="dchag-C", task="forecast", partitions=2, tree=(), **SMALL),
        ModelSpec(arch="dchag-L", task="mae", partitions=4, tree=(), **SMALL),
        ModelSpec(arch="tp-baseline", task="mae", **SMALL),
    ]


def _inputs(spec: ModelSpec):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, spec.channels, *spec.image, generator=g)
    lead = torch.tensor([7.0, 14.0, 30.0, 7.0])[:BATCH]
    mask = random_mask(BATCH, spec.grid[0] * spec.grid[1], 0.75, g)
    if spec.task == "forecast":
        target = torch.randn(BATCH, spec.outputs, *spec.image, generator=g)
    else:
        target = torch.randn(BATCH, spec.grid[0] * spec.grid[1], spec.channels * spec.patch ** 2,
                             generator=g)
    return x, lead, mask, target


def _loss(model, spec, x, lead, mask, target):
    out = model(x, lead) if spec.task == "forecast" else model(x, mask)
    return out, ((out - target) ** 2).mean()


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def exactness(tp: int, fsdp: int, dp: int) -> None:
    """Distributed outputs, every gradient and the grad norm equal the single-process model's."""
    env = launch_env()
    init_distributed(env, torch.device("cpu"))
    mesh = build_mesh(resolve_mesh(env.world_size, tp, fsdp, dp), "cpu")
    shard, shards = data_parallel_rank(mesh)
    rows = slice(shard * BATCH // shards, (shard + 1) * BATCH // shards)
    for spec in exactness_specs():
        if spec.arch != "tp-baseline" and spec.partitions % tp:
            continue
        ref = build_model(spec, seed=0)
        model = copy.deepcopy(ref)
        par = parallelize(model, mesh)
        x, lead, mask, target = _inputs(spec)
        ref_out, ref_loss = _loss(ref, spec, x, lead, mask, target)
        ref_loss.backward()
        out, loss = _loss(model, spec, x[rows], lead[rows], mask[rows], target[rows])
        loss.backward()
        label = f"{spec.arch}/{spec.task}/p{spec.partitions}/tree{list(spec.tree)} at tp{tp} fsdp{fsdp} dp{dp}"
        torch.testing.assert_close(_full(out), ref_out[rows], atol=1e-5, rtol=1e-4, msg=lambda m: f"{label} output: {m}")
        ref_params = dict(ref.named_parameters())
        names = set()
        for name, param in model.named_parameters():
            names.add(name)
            torch.testing.assert_close(_full(param.grad), ref_params[name].grad, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, n=name: f"{label} grad of {n}: {m}")
        ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()])
        torch.testing.assert_close(grad_norm(par), ref_norm, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{label} grad norm: {m}")
        if spec.arch != "tp-baseline":
            per_rank = spec.partitions // tp
            tp_rank = mesh["tp"].get_local_rank()
            owned = {int(n.split(".")[2]) for n in names if n.startswith("front.partitions.")}
            assert owned == set(range(tp_rank * per_rank, (tp_rank + 1) * per_rank)), (label, owned)
        else:
            assert len(names) == len(ref_params), label
    dist.destroy_process_group()


def train_job(tmp: str, name: str, task: str = "mae", arch: str = "dchag-L", tp: int = 1,
              fsdp: int = 1, steps: int = 6, **settings):
    """A small TrainJob under tmp (synthetic spectral tiles unless data= is given)."""
    from pathlib import Path

    from pipeline_src.train.loop import TrainJob, TrainSettings

    data = settings.pop("data", {"bands": 12, "image": [16, 16], "mask_ratio": 0.75, "seed": 3})
    model = {"arch": arch, "dim": 32, "depth": 2, "heads": 4, "agg_heads": 4, "mlp_ratio": 2.0,
             "patch": 4, "partitions": settings.pop("partitions", 2), "tree": settings.pop("tree", []),
             "decoder_depth": 1}
    s = TrainSettings(steps=steps, micro_batch=2, tp=tp, fsdp=fsdp, warmup_steps=2,
                      checkpoint_every=settings.pop("checkpoint_every", 0), log_every=2, **settings)
    run = Path(tmp) / name
    return TrainJob(name=name, task=task, model=model, settings=s, run_dir=run,
                    final_dir=run / "final", summary_path=run / "summary.json", data=data)


def train(job, kill_at_step: int | None = None) -> None:
    """run_training on this rank; rank 0 sends itself SIGTERM after `kill_at_step` steps."""
    import os
    import signal

    from pipeline_src.train.loop import Preempted, run_training

    def on_step(step, loss):
        if kill_at_step is not None and step == kill_at_step and int(os.environ["RANK"]) == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        run_training(job, on_step=on_step)
    except Preempted:
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def probe_output(ckpt_path: str, tp: int, fsdp: int, out_file: str) -> None:
    """Load a checkpoint into a parallelized model at this world size; rank 0 saves its output."""
    from pipeline_src.parallel import checkpoint as ckpt

    env = launch_env()
    init_distributed(env, torch.device("cpu"))
    mesh = build_mesh(resolve_mesh(env.world_size, tp, fsdp), "cpu")
    meta = ckpt.read_meta(ckpt_path)
    spec = ModelSpec.from_dict(meta["spec"])
    model = build_model(spec, seed=123)  # different init: the load must overwrite it
    parallelize(model, mesh)
    ckpt.load_checkpoint(ckpt_path, model, None, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    x, lead, mask, _ = _inputs(spec)
    with torch.no_grad():
        out = model(x, lead) if spec.task == "forecast" else model(x, mask)
    out = _full(out)
    if dist.get_rank() == 0:
        torch.save(out, out_file)
    dist.destroy_process_group()
