"""A step-time model: a roofline over the step's ops plus collective bytes over link bandwidth.

step_s = max(matmul FLOPs / sustained FLOP rate, matmul bytes / sustained memory bandwidth)
         + other ops' bytes / sustained memory bandwidth
         + sum over collectives of logical bytes * algorithm factor(kind, group size)
           / bandwidth(group inside a node or not)

Matmul-class ops (those with a FLOP formula) are bound by compute or memory, whichever is
slower; elementwise, softmax, copy and optimizer ops only move memory (traffic.py counts
both). Without traffic figures the model falls back to FLOPs alone.

Ring algorithms move 2(n-1)/n of an all-reduce's buffer per rank and (n-1)/n of an
all-gather's output or a reduce-scatter's input. A group whose ranks span no more than one
node uses the intra-node link, otherwise the per-GPU share of the node's network. Compute and
communication are added (no overlap): an upper bound on the step time where FSDP prefetching
hides its all-gathers. Every figure below is a datasheet peak; `efficiency` is the one
assumption about how much of it a ViT step sustains, and the report checks the result
against the measured CPU step and the authors' logged TFLOPS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Hardware:
    """Peak rates of one accelerator and its links."""

    name: str
    peak_tflops: float  # dense bf16 (fp32 for CPUs) per device
    intra_node_gb_s: float  # per direction, the slowest link a ring over the node's devices uses
    inter_node_gb_s: float  # per device: the node's network bandwidth divided by its devices
    devices_per_node: int
    memory_gb: float
    memory_gb_s: float = 0.0  # memory bandwidth (datasheet), read + write
    efficiency: float = 0.35  # sustained fraction of peak for this model's matmuls
    memory_efficiency: float = 0.7  # sustained fraction of the memory bandwidth
    source: str = ""


HARDWARE = {
    "mi250x-gcd": Hardware(
        "AMD MI250X GCD (Frontier)", peak_tflops=191.5, intra_node_gb_s=50.0, inter_node_gb_s=12.5,
        devices_per_node=8, memory_gb=64.0, memory_gb_s=1638.0,
        source="383 TFLOPS bf16 and 3.2 TB/s HBM2e per MI250X = 2 GCDs; Infinity Fabric 50-100 GB/s between GCDs of different "
               "MI250X (200 GB/s within one): a ring over 8 GCDs runs at the 50 GB/s links; 4 Slingshot NICs "
               "x 25 GB/s per node = 12.5 GB/s per GCD (OLCF Frontier user guide)"),
    "h100-sxm": Hardware(
        "NVIDIA H100 SXM", peak_tflops=989.0, intra_node_gb_s=450.0, inter_node_gb_s=50.0,
        devices_per_node=8, memory_gb=80.0, memory_gb_s=3350.0,
        source="989 TFLOPS dense bf16, 3.35 TB/s HBM3; NVLink 4 900 GB/s bidirectional = 450 GB/s per direction; one 400 Gb/s "
               "NDR NIC per GPU = 50 GB/s (NVIDIA datasheet)"),
}

RING_FACTOR = {"all-reduce": lambda n: 2 * (n - 1) / n, "all-gather": lambda n: (n - 1) / n,
               "reduce-scatter": lambda n: (n - 1) / n, "broadcast": lambda n: 1.0, "all-to-all": lambda n: (n - 1) / n}


def comm_seconds(groups: list[dict], hw: Hardware) -> float:
    """Seconds on the links for collective groups as recorded by CollectiveLog.by_group()."""
    total = 0.0
    for g in groups:
        n = g["group_size"]
        if n <= 1:
            continue
        factor = RING_FACTOR.get(g["kind"], lambda n: 1.0)(n)
        bandwidth = hw.intra_node_gb_s if g["rank_span"] <= hw.devices_per_node else hw.inter_node_gb_s
        total += g["bytes"] * factor / (bandwidth * 1e9)
    return total


def step_estimate(flops: float, groups: list[dict], hw: Hardware, traffic: dict | None = None) -> dict:
    """Estimated step time of one rank, split into compute (roofline) and communication seconds."""
    rate = hw.peak_tflops * 1e12 * hw.efficiency
    if traffic and hw.memory_gb_s > 0:
        bandwidth = hw.memory_gb_s * 1e9 * hw.memory_efficiency
        compute = max(traffic["matmul_flops"] / rate, traffic["matmul_bytes"] / bandwidth) + traffic["other_bytes"] / bandwidth
    else:
        compute = flops / rate
    comm = comm_seconds(groups, hw)
    return {"compute_s": compute, "comm_s": comm, "step_s": compute + comm}


def measured_hardware(report: dict) -> Hardware:
    """The machine of a measured report as a Hardware: its measured matmul rate and all-reduce bandwidth."""
    cal = report["calibration"]
    return Hardware(f"{report['device_name']} (measured)", peak_tflops=cal["matmul_tflops"],
                    intra_node_gb_s=cal["allreduce_gb_s"], inter_node_gb_s=cal["allreduce_gb_s"],
                    devices_per_node=report["world"], memory_gb=0.0, memory_gb_s=cal.get("memory_gb_s", 0.0),
                    efficiency=1.0, memory_efficiency=1.0,
                    source="1024x1024 matmul rate, 64 MiB copy bandwidth and 16 MiB all-reduce bandwidth per "
                           "rank, measured with all ranks running (report.measured)")


def hardware_dict(hw: Hardware) -> dict:
    """JSON-ready hardware record."""
    return asdict(hw)
