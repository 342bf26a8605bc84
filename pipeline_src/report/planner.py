"""Pick a parallel layout before launch: projected peak memory per GPU of each candidate, the fastest that fits.

For a backbone class, channel count and GPU count, the candidates are TP sizes within a node,
-L or -C, the aggregation tree and activation checkpointing, with FSDP over the remaining
GPUs (fully sharded; --hsdp adds FSDP within a node and data parallelism across nodes).
Each candidate's peak is rank 0 of a fake world (report.projection, depth extended from
depths 2 and 4); among those that fit, the planner recommends the highest estimated
samples/s (report.throughput). It scans TP upwards and stops at the first that fits for
each (architecture, tree, recompute): memory falls with TP and speed falls too, so larger
TPs are never better.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.build import ModelSpec
from .paper import IMAGE, PATCH, PRESETS, largest_gap
from .projection import StepRecipe, run_many
from .throughput import HARDWARE, step_estimate


@dataclass(frozen=True)
class PlanRequest:
    """What the user asks the planner."""

    params: str  # a backbone class of report.paper.PRESETS, e.g. "7B"
    channels: int
    gpus: int
    gpu_mem_gb: float  # per GPU, GiB
    image: tuple[int, int] = IMAGE
    patch: int = PATCH
    depth: int = 32
    micro_batch: int = 1
    gpus_per_node: int = 8
    max_tp: int | None = None  # default: gpus_per_node (TP stays inside a node)
    archs: tuple[str, ...] = ("dchag-L", "dchag-C")
    trees: tuple[tuple[int, ...], ...] = ((),)
    recompute: tuple[str, ...] = ("none", "blocks")
    hsdp: bool = False
    headroom: float | None = None  # kept free; None: from the largest measured gap (paper.largest_gap)
    hardware: str = "mi250x-gcd"
    dim: int | None = None  # override the class's width and heads (small models, tests)
    heads: int | None = None

    def kept_free(self) -> tuple[float, str]:
        """(fraction of GPU memory kept free, where it comes from)."""
        if self.headroom is not None:
            return self.headroom, "--headroom"
        gap = largest_gap()
        return gap.headroom, f"the largest measured gap of a logged peak over its projection, {gap.describe()}"

    def shape(self) -> tuple[int, int]:
        """(embedding dim, heads) of the backbone."""
        dim, heads = PRESETS.get(self.params, (None, None))
        return self.dim or dim, self.heads or heads


def _check(req: PlanRequest) -> None:
    if req.params not in PRESETS and not (req.dim and req.heads):
        raise ValueError(f"unknown model class {req.params!r}: choose one of {', '.join(PRESETS)}")
    if req.gpus < 1 or req.gpu_mem_gb <= 0 or req.channels < 1:
        raise ValueError("--gpus, --gpu-mem-gb and --channels must be positive")
    if req.hardware not in HARDWARE:
        raise ValueError(f"unknown hardware {req.hardware!r}: choose one of {', '.join(HARDWARE)}")


def tp_sizes(req: PlanRequest) -> list[int]:
    """TP sizes that split the heads and MLP, divide the GPUs and stay within max_tp."""
    dim, heads = req.shape()
    limit = req.max_tp or req.gpus_per_node
    sizes, tp = [], 1
    while tp <= min(limit, req.gpus, req.channels):
        if heads % tp == 0 and (4 * dim) % tp == 0 and req.gpus % tp == 0:
            sizes.append(tp)
        tp *= 2
    return sizes


def spec_of(req: PlanRequest, arch: str, tree: tuple[int, ...], tp: int) -> ModelSpec:
    """The forecaster a layout would train."""
    dim, heads = req.shape()
    return ModelSpec(arch=arch, task="forecast", channels=req.channels, image=tuple(req.image), patch=req.patch,
                     dim=dim, depth=req.depth, heads=heads, agg_heads=heads, tree=tuple(tree),
                     partitions=1 if arch == "tp-baseline" else tp, outputs=req.channels)


_PROJECTED: dict[tuple, dict] = {}  # a layout's projection does not depend on the memory asked about


def _project_all(jobs: list[tuple], processes: int | None) -> list[dict]:
    keys = [(spec.fingerprint(), world, tp, fsdp, recipe) for _, spec, world, tp, fsdp, recipe in jobs]
    todo = [(k, j) for k, j in zip(keys, jobs) if k not in _PROJECTED]
    if todo:
        for (k, _), r in zip(todo, run_many([j for _, j in todo], processes)):
            _PROJECTED[k] = r
    return [_PROJECTED[k] for k in keys]


def _evaluate(req: PlanRequest, layouts: list[dict], processes: int | None) -> list[dict]:
    jobs = []
    for lay in layouts:
        recipe = StepRecipe(micro_batch=req.micro_batch, activation_checkpointing=lay["recompute"])
        jobs.append(("project", spec_of(req, lay["arch"], lay["tree"], lay["tp"]), req.gpus, lay["tp"], lay["fsdp"], recipe))
    hw = HARDWARE[req.hardware]
    usable = req.gpu_mem_gb * (1 - req.kept_free()[0])
    out = []
    for lay, r in zip(layouts, _project_all(jobs, processes)):
        gib = r["peak_bytes"] / 2**30
        est = step_estimate(r["flops"], r["collective_groups"], hw, r.get("traffic"))
        samples = req.micro_batch * req.gpus // lay["tp"]
        out.append({**lay, "tree": list(lay["tree"]), "peak_gib": gib, "margin_gib": usable - gib,
                    "fits": gib <= usable, "by_kind_gib": {k: v / 2**30 for k, v in r["by_kind"].items()},
                    "parameters": r["parameters"], "step_s": est["step_s"], "compute_s": est["compute_s"],
                    "comm_s": est["comm_s"], "samples_per_s": samples / est["step_s"]})
    return out


def plan(req: PlanRequest, processes: int | None = None) -> dict:
    """Every evaluated layout with its projected peak and margin, and the recommendation (or why none fits)."""
    _check(req)
    sizes = tp_sizes(req)
    if not sizes:
        raise ValueError(f"no TP size up to {req.max_tp or req.gpus_per_node} splits {req.params}'s heads "
                         f"and divides {req.gpus} GPUs")
    lines = [(arch, tree if arch != "tp-baseline" else (), rc) for arch in req.archs
             for tree in (req.trees if arch in ("dchag-L", "dchag-C") else ((),)) for rc in req.recompute]
    lines = list(dict.fromkeys(lines))
    evaluated: list[dict] = []
    open_lines = {line: 0 for line in lines}  # index into sizes of the next TP to try
    while open_lines:  # one round of TP sizes at a time, all lines in parallel
        batch = [{"arch": a, "tree": t, "recompute": rc, "tp": sizes[i], "fsdp": req.gpus // sizes[i], "dp": 1}
                 for (a, t, rc), i in open_lines.items()]
        results = _evaluate(req, batch, processes)
        evaluated += results
        for r in results:
            line = (r["arch"], tuple(r["tree"]), r["recompute"])
            if r["fits"] or open_lines[line] + 1 >= len(sizes):
                del open_lines[line]
            else:
                open_lines[line] += 1
    if req.hsdp:  # node-local FSDP, data parallel across nodes: less traffic off the node, more memory
        extra = []
        for r in evaluated:
            local = req.gpus_per_node // r["tp"]
            if r["fits"] and 1 < local < r["fsdp"]:
                extra.append({**{k: r[k] for k in ("arch", "recompute", "tp")}, "tree": tuple(r["tree"]),
                              "fsdp": local, "dp": req.gpus // (r["tp"] * local)})
        evaluated += _evaluate(req, extra, processes) if extra else []
    fitting = [r for r in evaluated if r["fits"]]
    headroom, source = req.kept_free()
    result = {"request": {**req.__dict__, "image": list(req.image)}, "layouts": evaluated,
              "usable_gib": req.gpu_mem_gb * (1 - headroom), "hardware": HARDWARE[req.hardware].name,
              "headroom": headroom, "headroom_source": source,
              "headroom_line": f"headroom {100 * headroom:.0f}% of {req.gpu_mem_gb:g} GiB kept free: {source}"}
    if not fitting:
        smallest = min(evaluated, key=lambda r: r["peak_gib"])
        result["recommendation"] = None
        result["reason"] = (f"does not fit: the smallest layout ({describe(smallest)}) needs "
                            f"{_gib(smallest['peak_gib'])} GiB per GPU, {req.gpu_mem_gb:g} GiB with "
                            f"{100 * headroom:.0f}% headroom leaves {_gib(result['usable_gib'])}")
        return result
    best = max(fitting, key=lambda r: r["samples_per_s"])
    result["recommendation"] = best
    result["reason"] = (f"{describe(best)}: {_gib(best['peak_gib'])} GiB per GPU ({_gib(best['margin_gib'])} GiB margin "
                        f"below {_gib(result['usable_gib'])} usable), the highest estimated throughput of the "
                        f"{len(fitting)} layouts that fit ({best['samples_per_s']:.1f} samples/s on "
                        f"{req.gpus} x {HARDWARE[req.hardware].name}, step {best['step_s']:.2f} s of which "
                        f"{best['comm_s']:.2f} s communication)")
    return result


def _gib(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def describe(r: dict) -> str:
    """e.g. 'dchag-L Tree0, TP 8 x FSDP 8, recompute blocks'."""
    tree = f"tree{list(r['tree'])}" if r["tree"] else "Tree0"
    dp = f" x DP {r['dp']}" if r.get("dp", 1) > 1 else ""
    return f"{r['arch']} {tree}, TP {r['tp']} x FSDP {r['fsdp']}{dp}, recompute {r['recompute']}"


def plan_table(result: dict) -> str:
    """The evaluated layouts as Markdown, recommendation marked."""
    from .tables import md_table

    rec = result.get("recommendation")
    rows = []
    for r in sorted(result["layouts"], key=lambda r: (not r["fits"], -r["samples_per_s"])):
        mark = "**recommended**" if r is rec else ("fits" if r["fits"] else "does not fit")
        rows.append([describe(r), f"{r['peak_gib']:.1f}", f"{r['margin_gib']:+.1f}", f"{r['samples_per_s']:.1f}",
                     f"{r['step_s']:.2f}", mark])
    return md_table(["layout", "peak GiB/GPU", "margin GiB", "est. samples/s", "est. step s", ""], rows)
