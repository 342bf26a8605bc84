# Paths, config views, helpers shared by the rule files, the effective config file that every
# CLI call reads, and the MLflow parent run. Rule files hold rules only.
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from pipeline_src import config as pipeline_config
from pipeline_src import tracking
from pipeline_src.era5.files import match_files, period_fingerprint
from pipeline_src.hyperspectral.readers import cube_files
from pipeline_src.parallel.hpc_env import RDZV_FLAG  # the launcher's word to the ranks' environment

# Full validation (schema + semantic checks such as overlapping split years) with a
# message naming the bad key; the schema defaults are filled in here.
try:
    CFG = pipeline_config.Config(pipeline_config.validate_dict(config, "config"))
except pipeline_config.ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}")

RESULTS = "results"
RESOURCES = "resources"
LOGS = "logs"
# One effective config file per distinct configuration, named by its hash: a dry run or a
# second invocation with another config writes another file and never changes the one that
# queued or running jobs of this configuration read. Jobs find it through DCHAG_CONFIG (set
# here, in every process that parses this workflow, the Slurm job step included), so the
# shell commands stay the same when the config changes; each rule's config_hash param reruns
# exactly the jobs whose sections changed.
EFFECTIVE_CONFIG = f"{RESULTS}/config/effective-{CFG.section_hash(*sorted(CFG.data))}.yaml"
os.environ.update(DCHAG_CONFIG=EFFECTIVE_CONFIG)

# Stage folders (downstream rules name upstream files through these, not retyped paths).
ERA5 = CFG.era5
ERA5_SOURCE = ERA5["source"]
ASSEMBLED = f"{RESULTS}/era5/assembled"
HS = CFG.hyperspectral
HS_IMAGES = CFG.hyperspectral_images()
HS_RAW = f"{RESOURCES}/hyperspectral/synthetic"
HS_OUT = f"{RESULTS}/hyperspectral"
HS_TILES = f"{HS_OUT}/tiles"
TRAIN = CFG.data["train"]
TRAIN_VARIANTS = {v["name"]: v for v in TRAIN["variants"]}
TRAIN_DIR = f"{RESULTS}/train"
EVAL = CFG.data["evaluate"]
EVAL_DIR = f"{RESULTS}/evaluation"
# Nodes and tasks per node of the rank-launching jobs, from their ranks and hpc.ranks_per_node.
TRAIN_PLACEMENT = pipeline_config.job_placement(CFG.data, "train")
EVAL_PLACEMENT = pipeline_config.job_placement(CFG.data, "evaluate")
BASELINES = pipeline_config.BASELINES
# Loads a profile's modules before training and evaluation, each checked (see module_prelude).
MODULES_SCRIPT = Path(workflow.basedir) / "workflow" / "scripts" / "hpc_modules.sh"
FORECASTERS = [n for n, v in TRAIN_VARIANTS.items() if v["task"] == "forecast"]
MAES = [n for n, v in TRAIN_VARIANTS.items() if v["task"] == "mae"]

ERA5_PIECES = [(g, str(y)) for g in ("pressure", "single") if g in CFG.required for y in CFG.all_years]
if "static" in CFG.required:
    ERA5_PIECES.append(("static", "static"))


def _write_effective_config():
    """Write the validated config once per change, atomically, for the CLI calls of the rules."""
    text = yaml.safe_dump(CFG.data, sort_keys=True)
    path = Path(EFFECTIVE_CONFIG)
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


_write_effective_config()

# In a conda deployment the job's env provides python; otherwise use this interpreter
# (the .venv), so jobs work whether or not the venv is activated.
from snakemake.settings.types import DeploymentMethod

if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    PYTHON = "python"
else:
    PYTHON = sys.executable
CLI = f"{PYTHON} -m pipeline_src.cli"


def era5_raw(wildcards):
    """The raw file(s) of one (group, period): acquired under resources/, or the user's own NetCDF
    files matching era5.files (source files), which are then inputs themselves."""
    if ERA5_SOURCE == "files":
        return match_files(ERA5["files"][wildcards.group], wildcards.group, wildcards.period, ERA5["years"])
    return f"{RESOURCES}/era5/{ERA5_SOURCE}/{wildcards.group}/{wildcards.period}.nc"


def era5_steps(wildcards):
    """Rerun trigger of one (group, period) file: the time steps the splits want of that year."""
    return period_fingerprint(wildcards.period, ERA5["hours"], ERA5["years"])


def hs_cubes(wildcards):
    """raw, white, dark cubes of one image (generated, or from config with source files), its
    leaf-trait raster where there is one, and under `files` every header and data file they are
    read from: replacing one reruns the image."""
    if HS["source"] == "files":
        entry = next(f for f in HS["files"] if f["name"] == wildcards.image)
        paths = {k: entry[k] for k in ("raw", "white", "dark", "traits") if entry.get(k)}
        return {**paths, "files": sorted({f for p in paths.values() for f in cube_files(p)})}
    return {"raw": f"{HS_RAW}/{wildcards.image}.raw",
            "white": f"{HS_RAW}/{wildcards.image}_white.raw",
            "dark": f"{HS_RAW}/{wildcards.image}_dark.raw",
            "traits": f"{HS_RAW}/{wildcards.image}_traits.raw",
            "files": [f"{HS_RAW}/{wildcards.image}{end}.hdr" for end in ("", "_white", "_dark", "_traits")]}


def hs_entry(wildcards):
    """Rerun trigger of one image: its own entry of hyperspectral.files (paths, dataset names)."""
    return str(sorted(next((f for f in HS["files"] if f["name"] == wildcards.image), {}).items()))


def train_inputs(wildcards):
    """Forecast variants read the assembled ERA5 splits; MAE variants the hyperspectral tiles."""
    if TRAIN_VARIANTS[wildcards.variant]["task"] == "forecast":
        return [f"{ASSEMBLED}/manifest.json"]
    if CFG.data["mae"]["source"] == "hyperspectral":
        return [f"{HS_TILES}/stats.json"]
    return []


def train_config_hash(wildcards):
    """Rerun trigger of one variant: the shared sections plus the variant's own entry."""
    variant = str(sorted(TRAIN_VARIANTS[wildcards.variant].items()))
    return f"{CFG.section_hash('model', 'train', 'forecast', 'mae')}-{variant}"


def on_cluster(resources):
    """True when the job runs under Slurm: its resources carry the Slurm profile's slurm_* keys.

    (The executor's name is not known yet where the job step evaluates params, and a dry run
    names no executor; the resources are the same in the main process, the job step and a dry run.)
    """
    return any(str(key).startswith("slurm_") for key in resources.keys())


def rank_launcher(placement):
    """The placement's ranks: srun under Slurm, else torchrun on this machine.

    The task geometry is always on the srun line (-N nodes -n ranks --ntasks-per-node): inside a
    Snakemake job step the SLURM_* variables are stripped and a bare srun starts one task.
    resources.rank_srun holds the srun command (the Frontier profile adds GPU binding and the
    network flag); plain srun otherwise. A profile's hpc_modules are loaded first, each checked
    (hpc_modules.sh). Each rank gets an explicit CPU thread count (Slurm's cpus_per_task; locally
    the job's threads shared out): Snakemake exports OMP/MKL_NUM_THREADS = the job's threads to
    every process, which would oversubscribe the cores and make results depend on the launcher.
    Nodes or tasks set by a profile or --set-resources that contradict the placement, and a
    hpc.ranks_per_node the profile's nodes cannot hold, are refused, dry runs included.
    """
    nproc = placement.ranks

    def launch(wildcards, threads, resources):
        choice = TRAIN["launcher"]
        if choice == "srun" or (choice == "auto" and on_cluster(resources)):
            check_placement(placement, resources)
            cpus = int(resources.get("cpus_per_task", 0) or 0) or 1
            modules = module_prelude(resources)
            if nproc == 1:  # not an MPI job: the job step already runs it as one Slurm task
                return f"{modules}{rank_threads(cpus)} {PYTHON} -m pipeline_src.cli"
            srun = resources.get("rank_srun") or "srun"
            flags = f"{RDZV_FLAG}=1 " if "--network=disable_rdzv_get" in srun.split() else ""
            return (f"{modules}{flags}{rank_threads(cpus)} {srun} {placement.srun_options()} -c {cpus} "
                    f"--kill-on-bad-exit=1 {PYTHON} -m pipeline_src.cli")
        return (f"{rank_threads(max(1, threads // nproc))} {PYTHON} -m torch.distributed.run --standalone "
                f"--nproc-per-node {nproc} -m pipeline_src.cli")

    return launch


def module_prelude(resources):
    """`source hpc_modules.sh M1 M2 ... && ` for the job's modules (hpc.modules, else the profile's
    hpc_modules resource), or nothing. The script keeps the site's default modules (no purge) and
    stops the job naming the module whose load fails, or when there is no `module` command."""
    modules = CFG.data["hpc"]["modules"]
    if modules is None:
        modules = str(resources.get("hpc_modules") or "").split()
    if not modules:
        return ""
    return f"source {shlex.quote(str(MODULES_SCRIPT))} {' '.join(map(shlex.quote, modules))} && "


def check_placement(placement, resources):
    """WorkflowError when the job's nodes or tasks differ from what its layout derives, or when the
    profile says a node holds hpc_ranks_per_node ranks and hpc.ranks_per_node is unset or larger."""
    wanted = placement.resources()
    wrong = {k: resources.get(k) for k in ("nodes", "tasks", "tasks_per_node")
             if resources.get(k) not in (None, wanted.get(k))}
    if wrong:
        raise WorkflowError(
            f"resources {wrong} contradict the layout: {placement.ranks} ranks with hpc.ranks_per_node "
            f"{CFG.data['hpc']['ranks_per_node']} take {placement.nodes} node(s) x {placement.tasks_per_node} "
            f"tasks; drop them from the profile or --set-resources and set train.nproc / evaluate.nproc "
            f"and hpc.ranks_per_node instead")
    site = resources.get("hpc_ranks_per_node")
    ours = CFG.data["hpc"]["ranks_per_node"]
    if site and (ours is None and placement.ranks > int(site) or ours is not None and ours > int(site)):
        raise WorkflowError(
            f"hpc.ranks_per_node is {ours if ours is not None else 'unset'} but this profile's nodes hold "
            f"{site} ranks (hpc_ranks_per_node), so {placement.ranks} ranks would ask {placement.nodes} node(s) "
            f"for {placement.tasks_per_node} tasks each. A --config on the command line replaces the "
            f"profile's config list: add hpc='{{ranks_per_node: {site}}}' to it, or set hpc.ranks_per_node "
            f"in your config file")


def rank_resources(placement):
    """Resources of a rank-launching rule: nodes and tasks from the placement, and under Slurm the
    srun it runs itself (resources.mpi; empty for one rank: the plugin refuses one-task MPI jobs)."""
    return {"mpi": "srun" if placement.ranks > 1 else "", **placement.resources()}


def rank_threads(n):
    """Environment assignments giving each rank n CPU threads (OpenMP and the BLAS libraries)."""
    return f"OMP_NUM_THREADS={n} MKL_NUM_THREADS={n} OPENBLAS_NUM_THREADS={n}"


def evaluate_inputs(wildcards):
    """The variant's final checkpoint and the data it is verified on."""
    return {"checkpoint": f"{TRAIN_DIR}/{wildcards.variant}/final", "data": train_inputs(wildcards)}


def system_outputs(system):
    """The files every evaluated system (variant or baseline) gets under results/evaluation/."""
    return {
        "metrics": f"{EVAL_DIR}/{system}/metrics.csv",
        "summary": f"{EVAL_DIR}/{system}/summary.json",
        "data": directory(f"{EVAL_DIR}/{system}/data"),
        "plots": report(directory(f"{EVAL_DIR}/{system}/plots"), patterns=["{name}.png"],
                        caption="../report/evaluate.rst", category="Evaluation", subcategory=system),
    }


def one_of(names):
    """A wildcard constraint matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def parent_folder(name):
    """A params function: the folder holding the named output (derived, not retyped)."""
    return lambda wildcards, output: str(Path(output[name]).parent)


onstart:
    if getattr(workflow.executor_plugin, "name", "") == "slurm":
        from snakemake.resources import Resource

        from pipeline_src.slurm import preflight

        # Job groups (the Frontier profile packs per-year and per-image jobs 8 to a node) are laid
        # out, which of their jobs run side by side, against --cores: that is the submitting
        # machine's count (profiles/default's `cores: all`, applied over --profile), not a compute
        # node's. A profile's hpc_node_cores resource states the node's. (Snakemake's parsed
        # default resources: a private attribute of the pinned Snakemake 9.)
        node_cores = getattr(workflow.resource_settings._parsed_default_resources.get("hpc_node_cores"), "value", None)
        if node_cores is not None:  # (a resource no profile sets reads as one whose value is None)
            workflow.global_resources["_cores"] = Resource("_cores", int(node_cores))
        misfits = preflight(workflow.dag)
        if misfits:
            raise WorkflowError(
                "these jobs do not fit the cluster: no node can hold them (Slurm would leave them pending "
                "forever, PartitionConfig) or they ask for more time than the partition or the queue "
                "allows:\n  " + "\n  ".join(misfits) + "\nLower their resources (--set-resources "
                "RULE:cpus_per_task=N RULE:mem_mb=M RULE:runtime=MIN; on the command line this replaces the "
                "profile's whole set-resources map), spread the ranks of train and evaluate over nodes with "
                "hpc.ranks_per_node, or choose another partition."
            )
    tracking.start_workflow_run(
        CFG.mlflow,
        CFG.data["run_name"],
        params=CFG.data,
        tags={"workdir": os.getcwd()},
    )


onsuccess:
    tracking.end_workflow_run(CFG.mlflow, ok=True)


onerror:
    tracking.end_workflow_run(CFG.mlflow, ok=False)
