"""Allocate a meta-built, parallelized model's own share on a device, and give it its initial weights.

The model is built on the meta device (no memory), cut by parallelize(), and only then
allocated: a rank never holds more than its shard of any weight, plus one full
parameter at a time while it is being initialised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ..model.init import init_weights


def _write_local(param: nn.Parameter, full: torch.Tensor) -> None:
    """Copy this rank's piece of the full initial value into a (possibly sharded) parameter."""
    if isinstance(param, DTensor):
        # src_data_rank=None: every rank made the same full value, so each slices its own piece
        piece = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(piece.to_local())
    else:
        param.copy_(full)


def materialize(model: nn.Module, device: torch.device, seed: int | None) -> nn.Module:
    """to_empty on `device`, then (with a seed) the name-seeded initial weights of model.init."""
    model.to_empty(device=device)
    if seed is not None:
        init_weights(model, seed, write=_write_local)
    return model
