"""Pre-flight check for Slurm runs: refuse jobs that no node of their partition can hold.

Slurm accepts such a job and leaves it pending forever (reason PartitionConfig) while the
workflow prints nothing. Before the first submission the workflow compares every job's
request (CPUs per task x tasks per node, memory per node) with the nodes `sinfo` reports.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """What one job asks Slurm for."""

    rule: str
    partition: str | None
    cpus_per_task: int = 1
    tasks: int = 1
    nodes: int = 1
    mem_mb: int = 0  # per node; 0 = the whole node's memory (sbatch --mem=0)

    @property
    def cpus_per_node(self) -> int:
        """CPUs one node must have: cpus_per_task x the tasks that land on it."""
        return self.cpus_per_task * math.ceil(self.tasks / max(1, self.nodes))


def parse_sinfo(text: str) -> tuple[dict[str, list[tuple[int, int]]], str | None]:
    """`sinfo -h -N -o '%P|%c|%m'` -> ({partition: [(cpus, memory MB) per node]}, default partition)."""
    nodes: dict[str, list[tuple[int, int]]] = {}
    default = None
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        name, cpus, mem = parts
        if name.endswith("*"):
            name = name[:-1]
            default = name
        try:
            nodes.setdefault(name, []).append((int(cpus), int(mem.rstrip("+"))))
        except ValueError:
            continue
    return nodes, default


def misfits(requests: list[Request], nodes: dict[str, list[tuple[int, int]]], default: str | None) -> list[str]:
    """One line per distinct request that no node (or not enough nodes) of its partition can hold."""
    lines, seen = [], set()
    for r in requests:
        partition = r.partition or default
        key = (r.rule, partition, r.cpus_per_node, r.nodes, r.mem_mb)
        if key in seen or partition is None:
            continue
        seen.add(key)
        if partition not in nodes:
            lines.append(f"rule {r.rule}: partition {partition!r} does not exist (sinfo lists "
                         f"{', '.join(sorted(nodes)) or 'none'})")
            continue
        able = [n for n in nodes[partition] if n[0] >= r.cpus_per_node and (r.mem_mb <= 0 or n[1] >= r.mem_mb)]
        if len(able) >= r.nodes:
            continue
        cpus, mem = max(c for c, _ in nodes[partition]), max(m for _, m in nodes[partition])
        lines.append(f"rule {r.rule} asks {r.nodes} node(s) with {r.cpus_per_node} CPUs "
                     f"({r.cpus_per_task} per task x {math.ceil(r.tasks / max(1, r.nodes))} tasks) and "
                     f"{r.mem_mb} MB each; partition {partition} has {len(able)} such node(s) (largest: "
                     f"{cpus} CPUs, {mem} MB)")
    return lines


def query_sinfo() -> str | None:
    """sinfo's node list, or None where sinfo is not installed or does not answer."""
    if shutil.which("sinfo") is None:
        return None
    try:
        return subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def request_of(rule: str, resources) -> Request:
    """A Request from a Snakemake job's resources (a mapping)."""
    def num(key, default):
        value = resources.get(key, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            return default

    nodes = num("nodes", 1)
    tasks = num("tasks_per_node", 0) * nodes or num("tasks", 1)
    return Request(rule, resources.get("slurm_partition") or None, num("cpus_per_task", 1), tasks, nodes,
                   num("mem_mb", 0))


def preflight(jobs) -> list[str]:
    """Misfits of the Snakemake jobs that would be submitted (local rules excluded); [] without sinfo."""
    text = query_sinfo()
    if text is None:
        return []
    nodes, default = parse_sinfo(text)
    requests = [request_of(job.rule.name, job.resources) for job in jobs if not job.is_local]
    return misfits(requests, nodes, default)
