"""The report's Markdown: measured part, projection check, throughput model, paper-scale sections."""

from __future__ import annotations

from .tables import MEMORY_KINDS, md_table, measured_table
from .throughput import HARDWARE, Hardware, step_estimate

GIB = 2**30


def _pct(x) -> str:
    return "" if x is None else f"{x:+.1f}%"


def add_throughput(rows: list[dict]) -> list[dict]:
    """Estimated step time, samples/s per TP group and the authors' TFLOPS measure on MI250X and H100."""
    out = []
    for r in rows:
        r = dict(r)
        micro = r["recipe"]["micro_batch"]
        for key, hw in (("mi250x", HARDWARE["mi250x-gcd"]), ("h100", HARDWARE["h100-sxm"])):
            est = step_estimate(r["flops"], r["collective_groups"], hw, r.get("traffic"))
            r[f"{key}_step_s"], r[f"{key}_comm_s"] = est["step_s"], est["comm_s"]
            r[f"{key}_samples_per_s"] = micro / est["step_s"]
            r[f"{key}_tflops"] = 3 * r.get("forward_flops", 0) / est["step_s"] / 1e12
        out.append(r)
    return out


def _implied(r: dict) -> list[str]:
    if not r.get("logged_tflops") or not r.get("forward_flops"):
        return ["", ""]
    implied = r["logged_tflops"] * 1e12 * r["recipe"]["micro_batch"] / (3 * r["forward_flops"])
    return [f"{implied:.3f}", f"{r['mi250x_samples_per_s'] / implied:.1f}"]


def _hardware_table(hws: list[Hardware]) -> str:
    return md_table(["device", "peak TFLOPS", "sustained fraction", "memory GB/s", "sustained fraction",
                     "intra-node GB/s", "inter-node GB/s per device", "source"],
                    [[h.name, f"{h.peak_tflops:.3g}", f"{h.efficiency:.2f}", f"{h.memory_gb_s:.4g}",
                      f"{h.memory_efficiency:.2f}", f"{h.intra_node_gb_s:.3g}", f"{h.inter_node_gb_s:.3g}", h.source]
                     for h in hws])


def report_markdown(measured: dict, rows: list[dict], check: list[dict], hw: Hardware, trained: list[dict], cfg) -> str:
    """report.md without the paper-scale sections."""
    top = max(r["channels"] for r in rows)
    at_top = {r["variant"]: r for r in rows if r["channels"] == top}
    lines = [f"# Memory and throughput: D-CHAG vs TP-only ({cfg.data['run_name']})", "",
             "## 1. Measured on this machine", "",
             f"Every variant takes the training loop's step (forward, backward, AdamW) on {measured['world']} real "
             "processes, tensor parallel over all of them. `gather-all` is the paper's control: distributed "
             "tokenization, then the gather of every channel token and the final attention over all of them "
             "(no partial aggregation). Memory is torch's MemTracker (tensor bytes by kind) on CPU and the "
             "CUDA allocator's peak on GPUs; collectives are counted in the step itself.", "",
             measured_table(measured), "",
             "![peak memory and samples/s as ratios to TP-only](plots/measured_ratios.png)", "",
             "![measured peak by kind](plots/measured_by_kind.png)", ""]
    if "dchag-L" in at_top and "tp-baseline" in at_top:
        l, g = at_top["dchag-L"], at_top.get("gather-all")
        lines += [f"At {top} channels dchag-L holds {l['peak_mib_vs_tp']:.2f}x the TP-only peak per rank, runs at "
                  f"{l['samples_per_s_vs_tp']:.2f}x its samples/s and moves {l['comm_bytes_vs_tp']:.3f}x its "
                  "collective bytes" + (f"; the gather-all control holds {g['peak_mib_vs_tp']:.2f}x and moves "
                                        f"{g['comm_bytes_vs_tp']:.2f}x." if g else "."), ""]
    lines += ["### Projection check: fake world vs real processes", "",
              "The same configurations at the largest channel count, projected as rank 0 of a fake world "
              "(report.projection, the method of section 2) beside the real MemTracker peak of rank 0:", "",
              md_table(["channels", "variant", "measured MiB", "projected MiB", "deviation", "collectives equal",
                        "FLOPs equal"],
                       [[c["channels"], c["variant"], f"{c['measured_mib']:.1f}", f"{c['projected_mib']:.1f}",
                         _pct(c["deviation_pct"]), c["measured_collectives"] == c["projected_collectives"],
                         c["measured_flops"] == c["projected_flops"]] for c in check]), "",
              "### The trained variants' own runs", "",
              md_table(["variant", "arch", "task", "mesh", "samples/s", "peak MB per rank", "memory measure"],
                       [[t["variant"], t["arch"], t["task"], "x".join(f"{k}{v}" for k, v in t["mesh"].items()),
                         f"{t['samples_per_s']:.1f}", " / ".join(f"{m:.0f}" for m in t["peak_mb_per_rank"]),
                         t["memory_kind"]] for t in trained]), "",
              "These are whole-process figures of the pipeline's own training jobs (resident set size on CPU, "
              "including the interpreter and data loader), not comparable with the tensor bytes above.", "",
              "## 2. Projected to the authors' scale", ""]
    if not cfg.data["report"]["paper_scale"]:
        lines += ["Not in this report: set `report.paper_scale: true`, or run `snakemake report_paper` for "
                  "`results/report/paper/paper.md` alone (CPU only, about 35 minutes on 2 cores).", ""]
    else:
        lines += ["See the sections below.", ""]
    lines += ["## 3. Throughput model", "",
              "step time = max(matmul FLOPs / sustained FLOP rate, matmul bytes / sustained memory bandwidth) + "
              "other ops' bytes / sustained memory bandwidth + collective bytes x ring factor / link bandwidth "
              "(report.throughput); compute and communication are added (no overlap), ops are not fused. Devices:", "",
              _hardware_table([hw, HARDWARE["mi250x-gcd"], HARDWARE["h100-sxm"]]), "",
              "Check on this machine (its measured matmul rate, copy and all-reduce bandwidth, rank 0):", "",
              md_table(["channels", "variant", "FLOPs/step", "comm MiB/step", "measured step s", "estimated step s",
                        "estimate / measured"],
                       [[r["channels"], r["variant"], f"{r['flops']:.3g}", f"{r['comm_bytes'] / 2**20:.1f}",
                         f"{r['step_s']:.3f}", f"{_est(r, measured, hw):.3f}", f"{_est(r, measured, hw) / r['step_s']:.2f}"]
                        for r in rows]), "",
              "On this machine the rates are measured (matmul, copy, all-reduce), so the ratio tests the model's "
              "form: how much of a step is its matmuls, its memory traffic and its collectives, with Python, "
              "dispatch and allocator overheads the rest."]
    return "\n".join(lines)


def _est(row: dict, measured: dict, hw: Hardware) -> float:
    result = next(r for r in measured["results"] if r["channels"] == row["channels"] and r["variant"] == row["variant"])
    rank0 = result["ranks"][0]
    return step_estimate(rank0["flops"], rank0["collective_groups"], hw, rank0.get("traffic"))["step_s"]


def closest_recipe(rows: list[dict]) -> tuple[str | None, dict[str, float]]:
    """The sensitivity recipe whose TP-only projections sit closest (mean |deviation|) to the logged TP-only GB."""
    scores: dict[str, list[float]] = {}
    for r in rows:
        if r["arch"] == "tp-baseline" and r["logged_gb"] and r["recipe_name"] != "main, full depth":
            scores.setdefault(r["recipe_name"], []).append(abs(r["deviation_pct"]))
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    return (min(means, key=means.get) if means else None), means


def out_of_sample(rows: list[dict], recipe: str) -> dict:
    """The projection scored on figures that did not choose `recipe`: every D-CHAG figure with a logged
    TP-only figure beside it, as an absolute peak, as the GiB it saves per GPU against TP-only, and as
    its ratio to TP-only (TP-only and D-CHAG share the backbone, which is what the choice calibrates)."""
    chosen = [r for r in rows if r["recipe_name"] == recipe and r["logged_gb"]]
    base = {r["config"]: r for r in chosen if r["arch"] == "tp-baseline"}
    items = []
    for r in chosen:
        b = base.get(r["config"])
        if r["arch"] == "tp-baseline" or b is None:
            continue
        logged_ratio, projected_ratio = r["logged_gb"] / b["logged_gb"], r["peak_gib"] / b["peak_gib"]
        items.append({"config": r["config"], "arch": r["arch"], "deviation_pct": r["deviation_pct"],
                      "logged_saving": b["logged_gb"] - r["logged_gb"], "projected_saving": b["peak_gib"] - r["peak_gib"],
                      "saving_error": (b["peak_gib"] - r["peak_gib"]) - (b["logged_gb"] - r["logged_gb"]),
                      "ratio_deviation_pct": 100 * (projected_ratio - logged_ratio) / logged_ratio})
    errors = [abs(i["saving_error"]) for i in items] or [0.0]
    savings = [i["logged_saving"] for i in items] or [0.0]
    return {"recipe": recipe, "calibrating": len(base), "n": len(items), "items": items,
            "absolute_within": sum(abs(i["deviation_pct"]) <= 15 for i in items),
            "ratio_within": sum(abs(i["ratio_deviation_pct"]) <= 15 for i in items),
            "saving_mean_abs_gib": sum(errors) / len(errors), "saving_max_abs_gib": max(errors),
            "saving_min_gib": min(savings), "saving_max_gib": max(savings)}


def _gap_line(chosen: list[dict]) -> str:
    """This run's largest logged-over-projected gap beside the one the planner's headroom comes from."""
    from .paper import PROJECTED_CLOSEST, largest_gap

    projected: dict[str, dict[str, float]] = {}
    for r in chosen:
        projected.setdefault(r["config"], {})[r["arch"]] = r["peak_gib"]
    fresh, stored = largest_gap(projected), largest_gap()
    same = all(abs(projected.get(c, {}).get(a, -1) - v) < 0.05 for c, cells in PROJECTED_CLOSEST.items()
               for a, v in cells.items())
    return (f"Largest gap of a logged peak over its projection here: {fresh.describe()}, i.e. "
            f"{100 * fresh.headroom:.0f}% of a GPU to keep free. `dchag plan` keeps {100 * stored.headroom:.0f}% "
            f"(report.paper.PROJECTED_CLOSEST: {stored.describe()})"
            + (", the same figures." if same else "; these figures differ from it: update PROJECTED_CLOSEST and "
               "docs/report.md from this table."))


def _ratio_row(r: dict, chosen: list[dict]) -> list:
    base = next((b for b in chosen if b["config"] == r["config"] and b["arch"] == "tp-baseline"), None)
    logged_ratio = f"{r['logged_gb'] / base['logged_gb']:.2f}" if base else ""
    projected_ratio = f"{r['peak_gib'] / base['peak_gib']:.2f}" if base else ""
    return [r["config"], r["arch"], r["logged_gb"], f"{r['peak_gib']:.1f}", _pct(r["deviation_pct"]),
            logged_ratio, projected_ratio]


def paper_sections(rows: list[dict], planned: dict) -> str:
    """The paper-scale projection and the planner example, as Markdown."""
    from .paper import ASSUMPTIONS
    from .planner import describe

    main = [r for r in rows if r["recipe_name"] == "main"]
    logged = [r for r in main if r["logged_gb"]]
    within = sum(abs(r["deviation_pct"]) <= 15 for r in logged)

    def kinds(r):
        return [f"{r['by_kind'].get(k, 0) / GIB:.2f}" for k in MEMORY_KINDS]

    lines = ["## Projected: the authors' configurations (rank 0 of a fake world)", "",
             "Assumptions:", "", *[f"- {a}" for a in ASSUMPTIONS], "",
             f"Under this recipe, fixed before any figure was compared: {within} of {len(logged)} logged figures "
             "within 15%.", "",
             md_table(["configuration", "arch", "params", "layout", "logged GB", "projected GiB", "deviation",
                       *[f"{k} GiB" for k in MEMORY_KINDS]],
                      [[r["config"], r["arch"], f"{r['parameters'] / 1e9:.2f}B", f"TP{r['tp']} x FSDP{r['fsdp']}",
                        r["logged_gb"] or "", f"{r['peak_gib']:.1f}", _pct(r["deviation_pct"]), *kinds(r)]
                       for r in main]), "",
             "![projected vs logged](plots/projected_vs_logged.png)", "",
             "How the answer moves with each assumption (projected GiB, deviation from the logged figure):", ""]
    names = list(dict.fromkeys(r["recipe_name"] for r in rows if r["recipe_name"] != "main, full depth"))
    table = {}
    for r in rows:
        table.setdefault((r["config"], r["arch"]), {})[r["recipe_name"]] = r
    sens = [[c, a, *(f"{cells[n]['peak_gib']:.1f} ({_pct(cells[n]['deviation_pct'])})" if n in cells else "" for n in names)]
            for (c, a), cells in table.items() if len(cells) > 1 and any(n in cells for n in names[1:])]
    lines += [md_table(["configuration", "arch", *names], sens), ""]
    best, scores = closest_recipe(rows)
    if best:
        chosen = [r for r in rows if r["recipe_name"] == best and r["logged_gb"]]
        oos = out_of_sample(rows, best)
        lines += ["Mean |deviation| of the TP-only column per recipe: "
                  + ", ".join(f"{n} {v:.1f}%" for n, v in scores.items()) + f". Closest: **{best}**.", "",
                  f"**Out of sample** (the {oos['calibrating']} TP-only figures chose this recipe and are not "
                  f"counted): {oos['absolute_within']} of {oos['n']} D-CHAG figures within 15%; the memory D-CHAG "
                  f"saves per GPU against TP-only, projected minus logged, is off by {oos['saving_mean_abs_gib']:.1f} "
                  f"GiB on average (at most {oos['saving_max_abs_gib']:.1f}; the logged savings are "
                  f"{oos['saving_min_gib']:.1f} to {oos['saving_max_gib']:.1f} GB); the ratio to TP-only is within 15% "
                  f"for {oos['ratio_within']} of {oos['n']}.", "",
                  md_table(["configuration", "arch", "logged GB", "projected GiB", "deviation", "vs TP-only logged",
                            "vs TP-only projected"], [_ratio_row(r, chosen) for r in chosen]), "",
                  md_table(["configuration", "arch", "saved vs TP-only, logged GB", "projected GiB", "error GiB",
                            "ratio deviation"],
                           [[i["config"], i["arch"], f"{i['logged_saving']:.1f}", f"{i['projected_saving']:.1f}",
                             f"{i['saving_error']:+.1f}", _pct(i["ratio_deviation_pct"])] for i in oos["items"]]), ""]
        lines += [_gap_line(chosen), ""]
    full = [(cells["main"], cells["main, full depth"]) for cells in table.values() if "main, full depth" in cells]
    if full:
        lines += ["Depth extension check (depths 2 and 4 extended to 32 vs a full-depth fake step):", "",
                  md_table(["configuration", "arch", "extended GiB", "full depth GiB", "difference"],
                           [[e["config"], e["arch"], f"{e['peak_gib']:.2f}", f"{f['peak_gib']:.2f}",
                             _pct(100 * (e["peak_gib"] - f["peak_gib"]) / f["peak_gib"])] for e, f in full]), ""]
    lines += ["Estimated throughput per TP group (section 3's model; TFLOPS the authors' way: 3 x forward FLOPs / "
              "step time):", "",
              md_table(["configuration", "arch", "MI250X samples/s", "MI250X comm share", "MI250X TFLOPS",
                        "logged TFLOPS", "logged samples/s (implied)", "estimate / logged", "H100 samples/s"],
                       [[r["config"], r["arch"], f"{r['mi250x_samples_per_s']:.3f}",
                         f"{r['mi250x_comm_s'] / r['mi250x_step_s']:.0%}", f"{r['mi250x_tflops']:.1f}",
                         r.get("logged_tflops") or "", *_implied(r), f"{r['h100_samples_per_s']:.3f}"]
                        for r in main]), "",
              "Implied samples/s: the logged TFLOPS times the step's time per forward FLOP, i.e. logged TFLOPS x "
              "micro-batch / (3 x rank 0's forward FLOPs), the authors' own definition run backwards. The "
              "ratio says how far the model's sustained fraction and link figures are from what the logged runs "
              "reached.", ""]
    req = planned["request"]
    lines += [f"## Planner: {req['params']} at {req['channels']} channels on {req['gpus']} GPUs of "
              f"{req['gpu_mem_gb']:g} GiB", "",
              f"`dchag plan --params {req['params']} --channels {req['channels']} --gpus {req['gpus']} "
              f"--gpu-mem-gb {req['gpu_mem_gb']:g}`", "",
              ("Recommendation: " + planned["reason"]) if planned.get("recommendation") else planned["reason"], "",
              planned.get("headroom_line", ""), "",
              planned.get("table", ""), ""]
    if planned.get("recommendation"):
        lines.append(f"Recommended layout: {describe(planned['recommendation'])}.")
    return "\n".join(lines)
