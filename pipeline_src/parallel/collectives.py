"""The D-CHAG all-gather of partition tokens, whose backward is a local slice.

Written by hand on purpose: torch's autograd-aware all-gather (functional collectives)
reduce-scatters in backward. Downstream TP layers already give every rank the full,
identical gradient of the gathered tensor, so a reduce-scatter would multiply the
gradient by the TP size; the correct backward is to take this rank's slice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..model.aggregation import PartitionGather

# torch 2.13 renamed all_gather_into_tensor (a FutureWarning on every call); the HPC env allows 2.6+
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _GatherPartitions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        world = dist.get_world_size(group)
        ctx.rank = dist.get_rank(group)
        ctx.count = local.shape[1]
        # Gather along dim 0 (contiguous per rank), then move partitions back to dim 1.
        send = local.transpose(0, 1).contiguous()
        out = send.new_empty((world * send.shape[0], *send.shape[1:]))
        _all_gather_single(out, send, group=group)
        return out.transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.narrow(1, ctx.rank * ctx.count, ctx.count).contiguous(), None


def gather_partitions(local: torch.Tensor, group) -> torch.Tensor:
    """(B, k, L, D) partition tokens of this rank -> (B, k * tp, L, D) in rank order, on every rank."""
    return _GatherPartitions.apply(local, group)


class TPPartitionGather(PartitionGather):
    """The D-CHAG partition gather over a TP group (parallel/plans.py puts it in the front end)."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return gather_partitions(tokens, self.group)
