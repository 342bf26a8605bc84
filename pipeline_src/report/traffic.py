"""Memory traffic of a training step, for a roofline step-time model.

A dispatch mode that sees every local aten op (after DTensor has desugared its own) and adds
up, for ops with a FLOP formula (matmuls, convolutions, attention: torch's flop_registry),
their FLOPs and the bytes they read and write, and for every other op the bytes alone.
Views move nothing and collectives are counted by CollectiveLog, so both are skipped. The
bytes are each op's tensor arguments plus outputs: what a kernel without fusion moves.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .collectives import COLLECTIVE_OPS


def _bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_bytes(o) for o in obj.values())
    return 0


class StepTraffic(TorchDispatchMode):
    """Totals of matmul FLOPs, matmul bytes and the other ops' bytes inside the mode."""

    def __init__(self):
        super().__init__()
        self.matmul_flops = 0
        self.matmul_bytes = 0
        self.other_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        if any(t is DTensor for t in types):
            return NotImplemented  # count the local ops DTensor runs, not the DTensor op
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if func.is_view or packet in COLLECTIVE_OPS:
            return out
        moved = _bytes(args) + _bytes(kwargs) + _bytes(out)
        if packet in flop_registry:
            self.matmul_flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
            self.matmul_bytes += moved
        else:
            self.other_bytes += moved
        return out

    def summary(self) -> dict[str, int]:
        """{"matmul_flops", "matmul_bytes", "other_bytes"} of the traced region."""
        return {"matmul_flops": self.matmul_flops, "matmul_bytes": self.matmul_bytes, "other_bytes": self.other_bytes}
