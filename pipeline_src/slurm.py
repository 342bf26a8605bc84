"""Pre-flight check for Slurm runs: refuse jobs that no node of their partition can hold, or
that ask for more time than their partition or the site's queue allows.

Slurm accepts a job no node can hold and leaves it pending forever (reason PartitionConfig)
while the workflow prints nothing; a job past the time limit is refused or never starts. Before
the first submission the workflow compares every job's request (CPUs per task x tasks per node,
memory per node, minutes) with the nodes and time limits `sinfo` reports, and with the site's
limits by job size (the profile's hpc_time_bins: Frontier's batch queue allows 2 h to jobs of
1-91 nodes, 6 h to 92-183 and 12 h above).
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
    runtime: int = 0  # minutes; 0 = not given
    time_bins: str = ""  # the site's limits by job size: "[PARTITION:] MAX_NODES:MINUTES ..."

    @property
    def cpus_per_node(self) -> int:
        """CPUs one node must have: cpus_per_task x the tasks that land on it."""
        return self.cpus_per_task * math.ceil(self.tasks / max(1, self.nodes))


def parse_sinfo(text: str) -> tuple[dict[str, list[tuple[int, int]]], str | None]:
    """`sinfo -h -N -o '%P|%c|%m|%l'` -> ({partition: [(cpus, memory MB) per node]}, default partition)."""
    nodes, default, _ = parse_sinfo_limits(text)
    return nodes, default


def parse_sinfo_limits(text: str):
    """Like parse_sinfo, plus {partition: time limit in minutes or None (infinite)} from a 4th field."""
    nodes: dict[str, list[tuple[int, int]]] = {}
    limits: dict[str, int | None] = {}
    default = None
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) not in (3, 4):
            continue
        name, cpus, mem = parts[:3]
        if name.endswith("*"):
            name = name[:-1]
            default = name
        try:
            nodes.setdefault(name, []).append((int(cpus), int(mem.rstrip("+"))))
        except ValueError:
            continue
        if len(parts) == 4:
            try:
                limits[name] = slurm_minutes(parts[3])
            except ValueError:  # a form this reader does not know: no limit is checked
                limits[name] = None
    return nodes, default, limits


def slurm_minutes(text: str) -> int | None:
    """A Slurm time limit ('120', '2:00:00', '1-12:00:00', '1-12', 'infinite') in whole minutes,
    seconds dropped (a request of more minutes is past it); None = no limit."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "", "n/a"):
        return None
    days, _, clock = text.rpartition("-")
    fields = [int(f) for f in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes = (fields + [0])[:2]
    elif len(fields) == 3:  # HH:MM:SS
        hours, minutes = fields[:2]
    else:  # MM:SS or MM
        hours, minutes = 0, fields[0]
    return (int(days or 0) * 24 + hours) * 60 + minutes


def bin_limit(time_bins: str, nodes: int, partition: str | None = None) -> tuple[int, int, int | None] | None:
    """(first node, last node, minutes) of the size bin `nodes` falls in, from "[PARTITION:]
    MAX_NODES:MINUTES ..."; minutes None when the job is larger than every bin; None when the bins
    name another partition."""
    words = time_bins.split()
    if words and not words[0][0].isdigit():
        if words[0].rstrip(":") != partition:
            return None
        words = words[1:]
    low = 1
    for high, minutes in sorted(tuple(map(int, b.split(":"))) for b in words):
        if nodes <= high:
            return low, high, minutes
        low = high + 1
    return low, nodes, None


def misfits(requests: list[Request], nodes: dict[str, list[tuple[int, int]]], default: str | None,
            limits: dict[str, int | None] | None = None) -> list[str]:
    """One line per distinct request that no node (or not enough nodes) of its partition can hold,
    or that asks for more minutes than the partition (limits) or its size bin (time_bins) allows."""
    lines, seen = [], set()
    for r in requests:
        partition = r.partition or default
        key = (r.rule, partition, r.cpus_per_node, r.nodes, r.mem_mb, r.runtime)
        if key in seen or partition is None:
            continue
        seen.add(key)
        if partition not in nodes:
            lines.append(f"rule {r.rule}: partition {partition!r} does not exist (sinfo lists "
                         f"{', '.join(sorted(nodes)) or 'none'})")
            continue
        lines += _time_misfits(r, partition, (limits or {}).get(partition))
        able = [n for n in nodes[partition] if n[0] >= r.cpus_per_node and (r.mem_mb <= 0 or n[1] >= r.mem_mb)]
        if len(able) >= r.nodes:
            continue
        cpus, mem = max(c for c, _ in nodes[partition]), max(m for _, m in nodes[partition])
        lines.append(f"rule {r.rule} asks {r.nodes} node(s) with {r.cpus_per_node} CPUs "
                     f"({r.cpus_per_task} per task x {math.ceil(r.tasks / max(1, r.nodes))} tasks) and "
                     f"{r.mem_mb} MB each; partition {partition} has {len(able)} such node(s) (largest: "
                     f"{cpus} CPUs, {mem} MB)")
    return lines


def _time_misfits(r: Request, partition: str, limit: int | None) -> list[str]:
    """The time lines of one request: past the partition's limit, past the site's bin for its size."""
    out = []
    if r.runtime and limit is not None and r.runtime > limit:
        out.append(f"rule {r.rule} asks {r.runtime} min; partition {partition} allows {limit} min (sinfo)")
    found = bin_limit(r.time_bins, r.nodes, partition) if r.time_bins else None
    if found and found[2] is None:
        out.append(f"rule {r.rule} asks {r.nodes} node(s); the queue takes jobs of at most {found[0] - 1} "
                   f"nodes (hpc_time_bins: {r.time_bins})")
    elif r.runtime and found and r.runtime > found[2]:
        low, high, minutes = found
        out.append(f"rule {r.rule} asks {r.runtime} min on {r.nodes} node(s); the queue allows {minutes} min "
                   f"to jobs of {low}-{high} nodes (hpc_time_bins: {r.time_bins})")
    return out


def query_sinfo() -> str | None:
    """sinfo's node list, or None where sinfo is not installed or does not answer."""
    if shutil.which("sinfo") is None:
        return None
    try:
        return subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%l"], capture_output=True, text=True,
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
                   num("mem_mb", 0), num("runtime", 0), str(resources.get("hpc_time_bins") or ""))


def preflight(dag) -> list[str]:
    """Misfits of the jobs the workflow would submit (local rules excluded; a job group is judged
    as the one job it is submitted as); [] without sinfo."""
    text = query_sinfo()
    if text is None:
        return []
    nodes, default, limits = parse_sinfo_limits(text)
    return misfits(submitted_requests(dag), nodes, default, limits)


def submitted_requests(dag) -> list[Request]:
    """One Request per Slurm submission: each job, or each job group (its layered resources)."""
    out, groups = [], set()
    for job in dag.needrun_jobs():
        if job.is_local:
            continue
        group = dag.get_job_group(job)
        if group is None:
            out.append(request_of(job.rule.name, job.resources))
        elif group not in groups:
            groups.add(group)
            out.append(request_of(f"group {group.groupid} ({len(group.jobs)} jobs)", group.resources))
    return out
