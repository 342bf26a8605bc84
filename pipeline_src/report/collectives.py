"""Count and size the collectives of a training step, by kind.

A dispatch mode that sees what torch's CommDebugMode sees (DTensor's functional
collectives after DTensor has desugared them, and the c10d ops that FSDP2 and the D-CHAG
gather issue) and adds each collective's logical size: the bytes of its full tensor (an
all-reduce's buffer, an all-gather's output, a reduce-scatter's input). CommDebugMode's own
module tracker fails on modules called more than once per step (the shared -C pool), so
this mode keeps only the counting. What crosses a link per rank is the logical size times
the algorithm's factor: see throughput.py.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug._comm_mode import NATIVE_TO_PY_MAPPING, c10d_collective_ops
from torch.utils._python_dispatch import TorchDispatchMode

COLLECTIVE_OPS = set(c10d_collective_ops) | set(NATIVE_TO_PY_MAPPING) | set(NATIVE_TO_PY_MAPPING.values())
KINDS = {"all_reduce": "all-reduce", "allreduce": "all-reduce", "all_gather": "all-gather",
         "allgather": "all-gather", "_allgather": "all-gather", "reduce_scatter": "reduce-scatter",
         "_reduce_scatter": "reduce-scatter", "broadcast": "broadcast", "all_to_all": "all-to-all",
         "alltoall": "all-to-all"}


def collective_kind(op_name: str) -> str:
    """'all-reduce', 'all-gather', 'reduce-scatter', ... for a c10d or functional op name."""
    name = op_name.split(".")[-1]
    for prefix, kind in sorted(KINDS.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix):
            return kind
    return name


def _group_ranks(args) -> list[int]:
    """Global ranks of the process group a collective runs on (a ProcessGroup or a functional group name)."""
    from torch.distributed import distributed_c10d as c10d

    for a in args:
        group = None
        if isinstance(a, torch._C._distributed_c10d.ProcessGroup):
            group = a
        elif isinstance(a, torch.ScriptObject):  # how c10d ops carry their group (or a ReduceOp)
            try:
                group = torch._C._distributed_c10d.ProcessGroup.unbox(a)
            except Exception:  # a ReduceOp
                continue
        elif isinstance(a, str):
            try:
                group = c10d._resolve_process_group(a)
            except Exception:  # not a group name
                continue
        if group is not None:
            return c10d.get_process_group_ranks(group)
    return []


def _largest_tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return max((_largest_tensor_bytes(o) for o in obj), default=0)
    return 0


class CollectiveLog(TorchDispatchMode):
    """Records, per collective kind, the count and the logical bytes of the collectives run inside it."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.groups: dict[str, dict] = {}  # "kind|size|span" -> count, bytes, group size, rank span

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        if any(t is DTensor for t in types):
            return NotImplemented  # let DTensor desugar into local ops and collectives first
        out = func(*args, **kwargs)
        if func._overloadpacket in COLLECTIVE_OPS:
            kind = collective_kind(str(func._overloadpacket))
            size = max(_largest_tensor_bytes(args), _largest_tensor_bytes(out))
            self.counts[kind] += 1
            self.bytes[kind] += size
            ranks = _group_ranks(args) or [0]
            span = max(ranks) - min(ranks) + 1  # TP groups are contiguous; FSDP/DP groups stride over them
            entry = self.groups.setdefault(f"{kind}|{len(ranks)}|{span}", {
                "kind": kind, "group_size": len(ranks), "rank_span": span, "count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += size
        return out

    def summary(self) -> dict[str, dict[str, int]]:
        """{kind: {"count": n, "bytes": b}} for the traced region."""
        return {k: {"count": self.counts[k], "bytes": int(self.bytes[k])} for k in sorted(self.counts)}

    def by_group(self) -> list[dict]:
        """Per (kind, group size, rank span): count and logical bytes (the throughput model's input)."""
        return [dict(v) for _, v in sorted(self.groups.items())]
