"""Markdown tables and CSV rows of the report's measured, projected and throughput parts."""

from __future__ import annotations

MIB, GB = 2**20, 1e9
MEMORY_KINDS = ("param", "grad", "opt", "act", "temp")


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (numbers already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def measured_rows(report: dict) -> list[dict]:
    """One row per (channels, variant): rank-max peak, rank-0 kinds, samples/s, collectives, ratios to TP."""
    rows, base = [], {}
    for r in report["results"]:
        ranks = r["ranks"]
        row = {"channels": r["channels"], "variant": r["variant"],
               "peak_mib": max(x["peak_bytes"] for x in ranks) / MIB,
               "samples_per_s": ranks[0]["samples_per_s"], "step_s": ranks[0]["step_s"],
               "flops": ranks[0]["flops"], "parameters": ranks[0]["parameters"],
               "comm_bytes": sum(c["bytes"] for c in ranks[0]["collectives"].values()),
               "comm_count": sum(c["count"] for c in ranks[0]["collectives"].values()),
               "collectives": ranks[0]["collectives"]}
        row.update({f"{k}_mib": ranks[0]["by_kind"].get(k, 0) / MIB for k in MEMORY_KINDS})
        if "reserved_bytes" in ranks[0]:
            row["reserved_mib"] = max(x["reserved_bytes"] for x in ranks) / MIB
        if r["variant"] == "tp-baseline":
            base[r["channels"]] = row
        ref = base.get(r["channels"])
        for key in ("peak_mib", "samples_per_s", "comm_bytes"):
            row[f"{key}_vs_tp"] = row[key] / ref[key] if ref and ref[key] else float("nan")
        rows.append(row)
    return rows


def measured_table(report: dict) -> str:
    """The measured results as Markdown: memory and speed, memory by kind, collectives per step."""
    s = report["settings"]
    rows = measured_rows(report)
    head = (f"{report['device']} ({report.get('device_name', '')}), {report['world']} ranks (TP {report['world']}), "
            f"dim {s['dim']}, depth {s['depth']}, image {s['image']}, patch {s['patch']}, batch/rank {s['batch']}, "
            f"precision {s['precision']}, recompute {s['activation_checkpointing']}, "
            f"sequence parallel {s['sequence_parallel']}; ratios are to tp-baseline in this same run.")
    main = md_table(["channels", "variant", "peak MiB/rank", "vs TP", "samples/s", "vs TP", "comm MiB/step", "vs TP"],
                    [[r["channels"], r["variant"], f"{r['peak_mib']:.1f}", f"{r['peak_mib_vs_tp']:.2f}",
                      f"{r['samples_per_s']:.2f}", f"{r['samples_per_s_vs_tp']:.2f}",
                      f"{r['comm_bytes'] / MIB:.2f}", f"{r['comm_bytes_vs_tp']:.2f}"] for r in rows])
    parts = [head, "", main]
    if any(r["param_mib"] for r in rows):
        parts += ["", "Rank-0 peak by kind (MiB, MemTracker: parameters, gradients, optimizer state, "
                      "activations, temporaries):", "",
                  md_table(["channels", "variant", *MEMORY_KINDS],
                           [[r["channels"], r["variant"], *(f"{r[f'{k}_mib']:.1f}" for k in MEMORY_KINDS)]
                            for r in rows])]
    kinds = sorted({k for r in rows for k in r["collectives"]})
    parts += ["", "Collectives of one training step on rank 0 (count / logical MiB: all-reduce buffer, "
                  "all-gather output, reduce-scatter input):", "",
              md_table(["channels", "variant", *kinds],
                       [[r["channels"], r["variant"],
                         *(f"{r['collectives'][k]['count']} / {r['collectives'][k]['bytes'] / MIB:.2f}"
                           if k in r["collectives"] else "0" for k in kinds)] for r in rows])]
    return "\n".join(parts)
