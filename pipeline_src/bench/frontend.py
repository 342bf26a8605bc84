"""Benchmark: per-rank peak memory, samples/s and collectives of every front-end variant vs tp-baseline.

Real processes (gloo on CPU, NCCL/RCCL on GPUs), the training loop's engine and step; the
measurement itself is the report stage's (pipeline_src.report.measured). Prints ratios to
the baseline measured in this one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..report.measured import REPORT_VARIANTS, MeasureSettings, Variant, measure_all
from ..report.tables import measured_table

ARCHS = ("tp-baseline", "gather-all", "dchag-L", "dchag-C")


def parse_args(argv=None) -> MeasureSettings:
    """Benchmark options (defaults sized for a 2-core CPU box; raise dim/depth on GPUs)."""
    p = argparse.ArgumentParser(prog="dchag bench frontend", description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--channels", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--archs", nargs="+", default=None, choices=ARCHS,
                   help="Tree0 variants of these architectures (default: the report's six, trees included)")
    p.add_argument("--tree", type=int, nargs="*", default=[], help="tree of the D-CHAG variants with --archs")
    p.add_argument("--image", type=int, nargs=2, default=[32, 64])
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--outputs", type=int, default=5)
    p.add_argument("--batch", type=int, default=2, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="as train.precision (auto: bf16 on GPUs)")
    p.add_argument("--recompute", dest="activation_checkpointing", choices=["none", "blocks", "full"],
                   default="none", help="as train.activation_checkpointing")
    p.add_argument("--sequence-parallel", action="store_true", help="as train.sequence_parallel")
    p.add_argument("--json", default=None, help="also write the raw results here")
    a = p.parse_args(argv)
    if a.archs is None:
        variants = REPORT_VARIANTS
    else:
        variants = tuple(Variant(arch, () if arch in ("tp-baseline", "gather-all") else tuple(a.tree))
                         for arch in a.archs)
    s = MeasureSettings(ranks=a.ranks, channels=tuple(a.channels), variants=variants, image=tuple(a.image),
                        patch=a.patch, dim=a.dim, depth=a.depth, heads=a.heads, outputs=a.outputs,
                        batch=a.batch, steps=a.steps, precision=a.precision,
                        activation_checkpointing=a.activation_checkpointing,
                        sequence_parallel=a.sequence_parallel)
    s.extra["json"] = a.json
    return s


def main(argv=None) -> None:
    """Run the benchmark and print the table."""
    s = parse_args(argv)
    json_path = s.extra.pop("json")
    report = measure_all(s)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    print(measured_table(report))


if __name__ == "__main__":
    main()
