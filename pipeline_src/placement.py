"""Where a job's ranks go: the nodes and tasks per node of a training or evaluation job.

The user states the ranks of a job (train.nproc, evaluate.nproc) and its mesh; the cluster
states how many ranks a node holds (hpc.ranks_per_node: 8 on Frontier, one per GPU). Slurm
places tasks in blocks (ranks 0..R-1 on the first node, ...) and the mesh keeps tp innermost,
so each TP group is a run of consecutive ranks. A layout is refused when it leaves a node half
empty in a multi-node job, or when a TP group would straddle more nodes than its size needs
(TP inside a node wherever it fits, as Megatron and the D-CHAG authors place it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .io import ConfigError


@dataclass(frozen=True)
class Placement:
    """Ranks of one job spread over whole nodes."""

    ranks: int
    nodes: int
    tasks_per_node: int

    def srun_options(self) -> str:
        """The task geometry for srun (inside a Snakemake job step the allocation's is stripped)."""
        if self.nodes == 1:
            return f"-N 1 -n {self.ranks}"
        return f"-N {self.nodes} -n {self.ranks} --ntasks-per-node {self.tasks_per_node}"

    def resources(self) -> dict:
        """Snakemake resources for the Slurm executor: --nodes, and --ntasks-per-node or --ntasks
        (the plugin takes one of the two, and tasks_per_node only above 1)."""
        if self.nodes > 1 and self.tasks_per_node > 1:
            return {"nodes": self.nodes, "tasks_per_node": self.tasks_per_node}
        return {"nodes": self.nodes, "tasks": self.ranks}


def place(ranks: int, ranks_per_node: int | None, tp: int, key: str) -> Placement:
    """The placement of `ranks` with TP groups of `tp`; ConfigError naming `key` if it cannot be whole.

    ranks_per_node None puts every rank of the job on one node (the generic default).
    """
    per_node = ranks_per_node or ranks
    if ranks <= per_node:
        return Placement(ranks, 1, ranks)
    if ranks % per_node:
        raise ConfigError(key, f"{ranks} ranks do not fill whole nodes of {per_node} "
                               f"(hpc.ranks_per_node): use a multiple of {per_node}, or at most {per_node}")
    need = math.ceil(tp / per_node)
    if (tp <= per_node and per_node % tp) or (tp > per_node and tp % per_node):
        raise ConfigError(key, f"tp {tp} does not tile nodes of {per_node} ranks (hpc.ranks_per_node): "
                               f"some TP groups would straddle {need + 1} nodes where {need} can hold one; "
                               f"choose a tp that divides {per_node} or a multiple of it")
    return Placement(ranks, ranks // per_node, per_node)
