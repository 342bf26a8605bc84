"""Worker functions run in spawned processes by the parallel tests (module level: picklable)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from pipeline_src.model.arch import random_mask
from pipeline_src.model.build import ModelSpec, build_model
from pipeline_src.parallel.collectives import gather_partitions
from pipeline_src.parallel.grads import grad_norm, reduce_partial_grads
from pipeline_src.parallel.materialize import materialize
from pipeline_src.parallel.mesh import build_mesh, init_distributed, launch_env, resolve_mesh
from pipeline_src.parallel.recompute import apply_activation_checkpointing
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
        ModelSpec(arch="gather-all", task="forecast", partitions=2, **SMALL),
        ModelSpec(arch="dchag-L", task="mae", partitions=4, tree=(), decoder_slopes=(2.0, 1.0, 0.5, 0.0), **SMALL),
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


def exactness(tp: int, fsdp: int, dp: int, sequence_parallel: bool = False, recompute: str = "none") -> None:
    """The production path (meta build, parallelize, materialise) starts from the single-process
    weights and gives its outputs, every gradient and the grad norm."""
    env = launch_env()
    init_distributed(env, torch.device("cpu"))
    mesh = build_mesh(resolve_mesh(env.world_size, tp, fsdp, dp), "cpu")
    shard, shards = data_parallel_rank(mesh)
    rows = slice(shard * BATCH // shards, (shard + 1) * BATCH // shards)
    for spec in exactness_specs():
        if spec.arch != "tp-baseline" and spec.partitions % tp:
            continue
        label = (f"{spec.arch}/{spec.task}/p{spec.partitions}/tree{list(spec.tree)} at tp{tp} fsdp{fsdp} dp{dp} "
                 f"sp{int(sequence_parallel)} ac-{recompute}")
        ref = build_model(spec, seed=0)
        with torch.device("meta"):
            model = build_model(spec, seed=None)
        apply_activation_checkpointing(model, recompute)
        par = parallelize(model, mesh, sequence_parallel=sequence_parallel)
        materialize(model, torch.device("cpu"), seed=0)
        ref_params = dict(ref.named_parameters())
        for name, param in model.named_parameters():  # same initial weights, whatever the mesh
            assert torch.equal(_full(param).detach(), ref_params[name].detach()), f"{label}: initial {name}"
        x, lead, mask, target = _inputs(spec)
        ref_out, ref_loss = _loss(ref, spec, x, lead, mask, target)
        ref_loss.backward()
        out, loss = _loss(model, spec, x[rows], lead[rows], mask[rows], target[rows])
        loss.backward()
        reduce_partial_grads(par)
        torch.testing.assert_close(_full(out), ref_out[rows], atol=1e-5, rtol=1e-4, msg=lambda m: f"{label} output: {m}")
        names = set()
        for name, param in model.named_parameters():
            names.add(name)
            assert not any(p.is_partial() for p in getattr(param.grad, "placements", ())), (name, param.grad)
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

    from pipeline_src.train.loop import TrainJob
    from pipeline_src.train.settings import ForecastData, MaeData, ModelSettings, train_sections

    data = settings.pop("data", {"bands": 12, "image": [16, 16], "mask_ratio": 0.75, "seed": 3})
    model = ModelSettings(arch=arch, dim=32, depth=2, heads=4, agg_heads=4, mlp_ratio=2.0, patch=4,
                          partitions=settings.pop("partitions", 2), tree=settings.pop("tree", []), decoder_depth=1)
    sections = train_sections(steps=steps, micro_batch=2, tp=tp, fsdp=fsdp, warmup_steps=2,
                              checkpoint_every=settings.pop("checkpoint_every", 0), log_every=2, **settings)
    run = Path(tmp) / name
    return TrainJob(name=name, task=task, model=model, data=(ForecastData if task == "forecast" else MaeData)(**data),
                    run_dir=run, final_dir=run / "final", summary_path=run / "summary.json", **sections)


def train(job, kill_at_step: int | None = None, sig: str = "SIGTERM", crash_in_save: int | None = None) -> None:
    """run_training on this rank; rank 0 sends itself `sig` after `kill_at_step` steps.

    SIGTERM is a polite stop: the ranks agree at the next host sync (every log_every = 2
    steps here) and checkpoint. SIGKILL is a crash. crash_in_save=N SIGKILLs rank 0 in the
    middle of writing the N-th checkpoint (after its shards, before it is complete); with
    asynchronous checkpoints, from the background thread that writes them."""
    import os
    import signal

    from pipeline_src.parallel import checkpoint as ckpt_module
    from pipeline_src.train.loop import Preempted, run_training

    def on_step(step):
        if kill_at_step is not None and step == kill_at_step and int(os.environ["RANK"]) == 0:
            os.kill(os.getpid(), getattr(signal, sig))

    if crash_in_save is not None:
        real_save, saves = ckpt_module.dcp.save, []

        def save(state, checkpoint_id):
            real_save(state, checkpoint_id=checkpoint_id)
            saves.append(checkpoint_id)
            if len(saves) == crash_in_save and int(os.environ["RANK"]) == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt_module.dcp.save = save
        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        real_write = FileSystemWriter.write_data

        def write_data(self, plan, planner):
            done = real_write(self, plan, planner)
            if "step_" in str(self.path):  # a step checkpoint (not the final one)
                saves.append(self.path)
                if len(saves) == crash_in_save and int(os.environ["RANK"]) == 0:
                    done.wait()  # this rank's shards are on disk; the save is not committed
                    os.kill(os.getpid(), signal.SIGKILL)
            return done
        if job.checkpoint.checkpoint_async:
            FileSystemWriter.write_data = write_data

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
        encoded = _full(model.encode(x)) if spec.task == "mae" else None  # the trait probe's features
    out = _full(out)
    if dist.get_rank() == 0:
        torch.save(out if encoded is None else {"out": out, "encode": encoded}, out_file)
    dist.destroy_process_group()


def block_collectives(sequence_parallel: bool, out_file: str) -> None:
    """Count the collectives of one TP block's forward and backward (CommDebugMode); rank 0 saves them."""
    from torch.distributed.tensor.debug import CommDebugMode

    from pipeline_src.model.vit import Block
    from pipeline_src.parallel.plans import block_plan
    from torch.distributed.tensor.parallel import parallelize_module
    from torch.distributed.tensor import DTensor as DT, Shard

    env = launch_env()
    init_distributed(env, torch.device("cpu"))
    mesh = build_mesh(resolve_mesh(env.world_size, env.world_size, 1, 1), "cpu")["tp"]
    block = Block(32, 4, 2.0)
    parallelize_module(block, mesh, block_plan(sequence_parallel))
    x = torch.randn(2, 8, 32, requires_grad=True)
    inp = DT.from_local(x.chunk(env.world_size, 1)[mesh.get_local_rank()], mesh, [Shard(1)]) if sequence_parallel else x
    counts = {}
    with CommDebugMode() as fwd:
        y = block(inp)
    counts["forward"] = {str(k).split(".")[-1]: v for k, v in fwd.get_comm_counts().items()}
    loss = (y.to_local() if isinstance(y, DT) else y).sum()
    with CommDebugMode() as bwd:
        loss.backward()
    counts["backward"] = {str(k).split(".")[-1]: v for k, v in bwd.get_comm_counts().items()}
    counts["norm_grad_placements"] = [str(p) for p in getattr(block.norm1.weight.grad, "placements", ())]
    if dist.get_rank() == 0:
        torch.save(counts, out_file)
    dist.destroy_process_group()


def optimizer_state(ckpt_path: str, tp: int, fsdp: int, out_file: str) -> None:
    """Load a training checkpoint (model + optimizer) at this mesh; rank 0 saves the whole
    optimizer state gathered per parameter name: {name: {exp_avg, exp_avg_sq, step}}."""
    from pipeline_src.parallel import checkpoint as ckpt
    from pipeline_src.parallel.materialize import materialize as mat
    from pipeline_src.train.engine import make_optimizer

    env = launch_env()
    init_distributed(env, torch.device("cpu"))
    mesh = build_mesh(resolve_mesh(env.world_size, tp, fsdp), "cpu")
    spec = ModelSpec.from_dict(ckpt.read_meta(ckpt_path)["spec"])
    with torch.device("meta"):
        model = build_model(spec, seed=None)
    parallelize(model, mesh)
    mat(model, torch.device("cpu"), seed=None)
    optimizer = make_optimizer(model, 1e-3, 0.05)
    ckpt.load_checkpoint(ckpt_path, model, optimizer, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    mine = {}
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        mine[name] = {k: _full(v).detach().clone() for k, v in state.items()}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)  # private partitions live on their own TP ranks
    if dist.get_rank() == 0:
        merged = {}
        for part in every:
            merged.update(part)
        torch.save(merged, out_file)
    dist.destroy_process_group()


def channel_owners(out_file: str) -> None:
    """Perturb each input channel in turn; rank 0 saves {channel: partitions whose tokens changed}."""
    env = launch_env()
    init_distributed(env, torch.device("cpu"))
    mesh = build_mesh(resolve_mesh(env.world_size, env.world_size, 1, 1), "cpu")
    spec = ModelSpec(arch="dchag-L", task="forecast", partitions=4, tree=(), **SMALL)
    with torch.device("meta"):
        model = build_model(spec, seed=None)
    parallelize(model, mesh)
    materialize(model, torch.device("cpu"), seed=0)
    front, outputs = model.front, {}
    for key, encoder in front.partitions.items():
        encoder.register_forward_hook(lambda m, i, out, k=int(key): outputs.__setitem__(k, out.detach().clone()))
    x = torch.randn(2, spec.channels, *spec.image, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        front(x)
        base = dict(outputs)
        changed = {}
        for c in range(spec.channels):
            bumped = x.clone()
            bumped[:, c] += 1.0
            front(bumped)
            changed[c] = sorted(k for k in base if not torch.equal(outputs[k], base[k]))
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, changed)
    if dist.get_rank() == 0:
        torch.save({c: sorted(k for part in every for k in part[c]) for c in changed}, out_file)
    dist.destroy_process_group()


def gather_backward() -> None:
    """The D-CHAG gather's backward gives each rank the gradient of its own partition slots, as one
    process computes it, when every slot's upstream gradient differs (the model's gradients at
    initialisation are too alike across slots to tell a wrong slice apart)."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(0)
    batch, k, tokens, dim = 2, 3, 4, 5
    full = torch.randn(batch, k * world, tokens, dim, generator=generator)
    upstream = torch.randn(batch, k * world, tokens, dim, generator=generator)  # the same on every rank, as TP gives
    reference = full.clone().requires_grad_(True)
    (reference * upstream).sum().backward()  # one process: every partition in one tensor
    mine = slice(rank * k, (rank + 1) * k)
    local = full[:, mine].clone().requires_grad_(True)
    gathered = gather_partitions(local, dist.group.WORLD)
    assert torch.equal(gathered, full)
    (gathered * upstream).sum().backward()
    torch.testing.assert_close(local.grad, reference.grad[:, mine], rtol=0, atol=0)
    dist.destroy_process_group()
