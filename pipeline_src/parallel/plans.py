"""Apply D-CHAG channel partitioning, DTensor tensor parallelism and FSDP2 to a model.

The model is built on the meta device (no memory), cut down here to the rank's share,
torchtitan style (parallelism from the outside), and only then materialised with each
parameter's seeded initial value (parallel/materialize.py: a rank holds its shard of each
weight, plus one full parameter at a time while that one is initialised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

from ..io import ConfigError
from ..model.aggregation import CrossAttentionPool, DCHAGFrontEnd
from ..model.vit import MLP, Attention, Backbone, Block, DistanceBias
from .collectives import TPPartitionGather


@dataclass
class Parallelized:
    """A model after parallelize(): its mesh and which parameters are private to a TP rank."""

    model: nn.Module
    mesh: DeviceMesh
    fsdp: bool
    private_names: set[str] = field(default_factory=set)

    @property
    def tp_group(self):
        """Process group of this rank's tensor-parallel peers."""
        return self.mesh["tp"].get_group()


def _shared_input(layout) -> PrepareModuleInput:
    """One input redistribution for all column-parallel layers of a module (Megatron's f operator).

    The module's input becomes a replicated DTensor once, so q, k and v (or fc1) consume it
    without each converting it again: their input gradients add up as one Partial tensor
    and are all-reduced once in backward instead of once per layer.
    """
    return PrepareModuleInput(input_layouts=(layout,), desired_input_layouts=(Replicate(),),
                              use_local_output=False)


def block_plan(sequence_parallel: bool) -> dict:
    """Megatron TP plan for one ViT block: 1 all-reduce per attention and per MLP in each direction.

    With sequence parallelism the residual stream stays sharded over tokens (Shard(1)) and
    the norms run on the local tokens: the all-reduces become an all-gather before and a
    reduce-scatter after each attention and MLP.
    """
    residual = Shard(1) if sequence_parallel else Replicate()
    plan = {"attn": _shared_input(residual), "mlp": _shared_input(residual),
            "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.proj": RowwiseParallel(output_layouts=residual, use_local_output=not sequence_parallel),
            "mlp.fc1": ColwiseParallel(),
            "mlp.fc2": RowwiseParallel(output_layouts=residual, use_local_output=not sequence_parallel)}
    if sequence_parallel:
        plan.update(norm1=SequenceParallel(), norm2=SequenceParallel())
    return plan


def pool_plan() -> dict:
    """TP plan for a cross-attention pool: k and v share one input redistribution; heads split."""
    return {"": _shared_input(Replicate()), "q": ColwiseParallel(), "k": ColwiseParallel(),
            "v": ColwiseParallel(), "proj": RowwiseParallel()}


def apply_sequence_parallel(backbone: Backbone, tp_mesh: DeviceMesh) -> None:
    """Shard the backbone's token sequence over TP on entry, gather it after the final norm."""
    parallelize_module(backbone, tp_mesh, PrepareModuleInput(
        input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_output=False))
    parallelize_module(backbone.norm, tp_mesh, SequenceParallel())
    parallelize_module(backbone, tp_mesh, PrepareModuleOutput(
        output_layouts=(Shard(1),), desired_output_layouts=(Replicate(),), use_local_output=True))


def check_tp(model: nn.Module, tp: int) -> None:
    """ConfigError if heads, MLP width or D-CHAG partitions cannot be split over `tp` ranks."""
    for name, module in model.named_modules():
        if isinstance(module, (Attention, CrossAttentionPool)):
            heads = module.q.out_features // module.head_dim
            if heads % tp:
                raise ConfigError("train.mesh.tp", f"{name or 'model'} has {heads} heads, "
                                                   f"not divisible by tp {tp}")
        if isinstance(module, MLP) and module.fc1.out_features % tp:
            raise ConfigError("train.mesh.tp", f"MLP width {module.fc1.out_features} of {name} "
                                               f"is not divisible by tp {tp}")
    front = getattr(model, "front", None)
    if isinstance(front, DCHAGFrontEnd):
        channels = front.bounds[-1][1]
        if tp > channels:
            raise ConfigError("train.mesh.tp", f"tp {tp} is larger than the {channels} input channels")
        if front.num_partitions % tp:
            raise ConfigError("train.mesh.tp", f"tp {tp} does not divide the {front.num_partitions} "
                                               f"D-CHAG partitions (model.partitions)")


def apply_dchag(front: DCHAGFrontEnd, tp_mesh: DeviceMesh) -> None:
    """Keep only this TP rank's partitions and gather partition tokens with the TP all-gather."""
    tp, rank = tp_mesh.size(), tp_mesh.get_local_rank()
    per_rank = front.num_partitions // tp
    front.keep_partitions(range(rank * per_rank, (rank + 1) * per_rank))
    if tp > 1:
        front.gather = TPPartitionGather(tp_mesh.get_group())


def private_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules private to this TP rank (a D-CHAG front end's partition encoders), by qualified name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, DCHAGFrontEnd):
            out.update({f"{name}.{sub}" if name else sub: m for sub, m in module.private_modules().items()})
    return out


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool = False) -> None:
    """Megatron-style TP on every block (heads and MLP split) and cross-attention pool, D-CHAG privates
    excepted; attention distance biases keep the slopes of the rank's heads."""
    inside_private = {id(sub) for m in private_modules(model).values() for sub in m.modules()}
    for module in list(model.modules()):
        if id(module) in inside_private:
            continue  # rank-private partial aggregators are not TP-sharded
        if isinstance(module, Block):
            parallelize_module(module, tp_mesh, block_plan(sequence_parallel))
        elif isinstance(module, CrossAttentionPool):
            for sub, style in pool_plan().items():
                parallelize_module(module.get_submodule(sub), tp_mesh, style)
        elif isinstance(module, Backbone) and sequence_parallel:
            apply_sequence_parallel(module, tp_mesh)
        elif isinstance(module, DistanceBias):
            per_rank = len(module.slopes) // tp_mesh.size()
            start = tp_mesh.get_local_rank() * per_rank
            module.keep_heads(range(start, start + per_rank))  # the heads this rank's q/k/v columns hold


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None) -> None:
    """FSDP2 over (dp, fsdp): shard each block and partition encoder, then the root (HSDP when dp > 1)."""
    kwargs = {"mesh": dp_mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    private = {id(m) for m in private_modules(model).values()}
    for module in model.modules():
        if isinstance(module, Block) or id(module) in private:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    if hasattr(model, "encode"):  # the MAE's encoder-only pass (evaluate/probe.py) gathers like forward
        register_fsdp_forward_method(model, "encode")


def parallelize(model: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None = None,
                sequence_parallel: bool = False) -> Parallelized:
    """D-CHAG partitioning + TP over mesh['tp'] + FSDP2 over mesh['dp','fsdp'] (skipped when size 1)."""
    tp_mesh = mesh["tp"]
    check_tp(model, tp_mesh.size())
    front = getattr(model, "front", None)
    if isinstance(front, DCHAGFrontEnd):
        apply_dchag(front, tp_mesh)
    if tp_mesh.size() > 1:
        apply_tp(model, tp_mesh, sequence_parallel)
    private = {f"{prefix}.{n}" for prefix, m in private_modules(model).items() for n, _ in m.named_parameters()}
    dp_mesh = mesh["dp", "fsdp"]
    use_fsdp = dp_mesh.size() > 1
    if use_fsdp:
        apply_fsdp(model, dp_mesh, mp_policy)
    return Parallelized(model, mesh, use_fsdp, private)


def data_parallel_rank(mesh: DeviceMesh) -> tuple[int, int]:
    """(index, count) of this rank's data shard: TP peers share one, dp x fsdp ranks differ."""
    dp, fsdp = mesh["dp"], mesh["fsdp"]
    return dp.get_local_rank() * fsdp.size() + fsdp.get_local_rank(), dp.size() * fsdp.size()

