"""Global gradient norm and clipping over a mix of TP DTensors, FSDP shards and D-CHAG private weights.

torch.nn.utils.clip_grad_norm_ cannot stack norms of DTensors living on different meshes,
and it does not know that D-CHAG's private weights differ across TP ranks (their squares
must be summed over the TP group, while replicated weights must be counted once).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

from .plans import Parallelized


def _local_square_sum(grad) -> tuple[torch.Tensor, tuple, tuple[int, ...]]:
    if isinstance(grad, DTensor):
        if any(p.is_partial() for p in grad.placements):
            grad = grad.redistribute(placements=[Replicate() if p.is_partial() else p
                                                 for p in grad.placements])
        # Shard and _StridedShard (FSDP over a TP-sharded dim) both split the tensor.
        dims = tuple(i for i, p in enumerate(grad.placements) if not p.is_replicate())
        return grad.to_local().float().pow(2).sum(), grad.device_mesh, dims
    return grad.float().pow(2).sum(), None, ()


def reduce_partial_grads(par: Parallelized) -> int:
    """All-reduce the pending partial sums of replicated weights' gradients, one bucket per mesh.

    Under sequence parallelism the norms see only their rank's tokens, so their weight
    gradients come out of backward as Partial DTensors (FSDP2 reduces these itself; plain
    TP does not). Megatron sums them in one bucket after backward; so does this. Returns
    the number of gradients reduced.
    """
    buckets: dict[tuple, list] = defaultdict(list)
    for param in par.model.parameters():
        grad = param.grad
        if isinstance(grad, DTensor) and any(p.is_partial() for p in grad.placements):
            buckets[(grad.device_mesh, grad.placements)].append(param)
    for (mesh, placements), params in buckets.items():
        locals_ = [p.grad.to_local() for p in params]
        flat = torch.cat([t.reshape(-1) for t in locals_])
        for dim, placement in enumerate(placements):
            if placement.is_partial():
                dist.all_reduce(flat, group=mesh.get_group(dim))
        done = [Replicate() if p.is_partial() else p for p in placements]
        for param, piece in zip(params, flat.split([t.numel() for t in locals_])):
            param.grad = DTensor.from_local(piece.view_as(param.grad.to_local()), mesh, done,
                                            shape=param.grad.shape, stride=param.grad.stride())
    return sum(len(v) for v in buckets.values())


def grad_norm(par: Parallelized) -> torch.Tensor:
    """The L2 norm of all gradients of the full (unsharded, all-partition) model, on every rank."""
    buckets: dict[tuple, list] = defaultdict(list)
    meshes = {}
    for name, param in par.model.named_parameters():
        if param.grad is None:
            continue
        sq, mesh, dims = _local_square_sum(param.grad)
        key = (mesh.mesh_dim_names if mesh is not None else (), dims, name in par.private_names)
        meshes[key] = mesh
        buckets[key].append(sq)
    shared = private = None
    for key in sorted(buckets, key=repr):  # same order on every rank: collectives must match
        total = torch.stack(buckets[key]).sum()
        for dim in key[1]:
            dist.all_reduce(total, group=meshes[key].get_group(dim))
        if key[2]:
            private = total if private is None else private + total
        else:
            shared = total if shared is None else shared + total
    device = next(par.model.parameters()).device
    shared = torch.zeros((), device=device) if shared is None else shared
    if par.private_names:
        private = torch.zeros((), device=device) if private is None else private
        if par.mesh["tp"].size() > 1:
            dist.all_reduce(private, group=par.tp_group)
        shared = shared + private
    return shared.sqrt()


def clip_grad_norm(par: Parallelized, max_norm: float) -> torch.Tensor:
    """Scale all gradients so their global norm is at most max_norm; return the norm before clipping."""
    norm = grad_norm(par)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for param in par.model.parameters():
        if param.grad is not None:
            grad = param.grad.to_local() if isinstance(param.grad, DTensor) else param.grad
            grad.mul_(coef.to(grad.device))
    return norm
