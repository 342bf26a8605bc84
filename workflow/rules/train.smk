# Training: one job per configured variant, all ranks launched by torchrun (local) or srun
# (Slurm profiles set resources.mpi to the srun command line).
TRAIN = CFG.data["train"]
TRAIN_VARIANTS = {v["name"]: v for v in TRAIN["variants"]}
TRAIN_DIR = f"{RESULTS}/train"

wildcard_constraints:
    variant="|".join(re.escape(n) for n in TRAIN_VARIANTS) or "NONE",


def train_inputs(wildcards):
    """Forecast variants read the assembled ERA5 splits; MAE variants the hyperspectral tiles."""
    if TRAIN_VARIANTS[wildcards.variant]["task"] == "forecast":
        return [f"{ASSEMBLED}/manifest.json"]
    if CFG.data["mae"]["source"] == "hyperspectral":
        return [f"{HS_OUT}/tiles/stats.json"]
    return []


def train_launcher(wildcards, resources):
    """srun (from resources.mpi) under Slurm profiles, else torchrun with train.nproc ranks."""
    mpi = resources.get("mpi", "")
    choice = TRAIN["launcher"]
    if choice == "srun" or (choice == "auto" and mpi):
        return f"{mpi or 'srun'} --kill-on-bad-exit=1 {PYTHON} -m pipeline_src.cli"
    return (f"{PYTHON} -m torch.distributed.run --standalone --nproc-per-node {TRAIN['nproc']} "
            f"-m pipeline_src.cli")


rule train_all:
    input:
        expand(f"{TRAIN_DIR}/{{variant}}/summary.json", variant=list(TRAIN_VARIANTS)),


rule train:
    input:
        train_inputs,
    output:
        final=directory(f"{TRAIN_DIR}/{{variant}}/final"),
        summary=f"{TRAIN_DIR}/{{variant}}/summary.json",
        plot=report(f"{TRAIN_DIR}/{{variant}}/loss.png", caption="../report/train_loss.rst",
                    category="Training", subcategory="{variant}"),
    params:
        config_hash=lambda w: CFG.section_hash("model", "train", "forecast", "mae")
                              + "-" + str(sorted(TRAIN_VARIANTS[w.variant].items())),
        launch=train_launcher,
        run_dir=f"{TRAIN_DIR}/{{variant}}",
    log:
        f"{LOGS}/train/{{variant}}.log",
    threads: TRAIN["nproc"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/train.yaml"
    shell:
        # Resumable checkpoints live in {params.run_dir}/checkpoints, which is deliberately
        # not an output: Snakemake deletes outputs before a rerun, which would defeat resuming.
        "{params.launch} train --config {EFFECTIVE_CONFIG} --rule {rule} --variant {wildcards.variant} "
        "--output-dir {params.run_dir} --assembled {ASSEMBLED} --tiles {HS_OUT}/tiles > {log} 2>&1"
