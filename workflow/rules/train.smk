# Training: one job per configured variant, all ranks launched by torchrun (local) or srun
# (Slurm profiles set resources.mpi to the srun command line).


wildcard_constraints:
    variant="|".join(re.escape(n) for n in TRAIN_VARIANTS) or "NONE",


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
        config_hash=train_config_hash,
        launch=rank_launcher(TRAIN_PLACEMENT),
        run_dir=parent_folder("summary"),
        assembled=ASSEMBLED,
        tiles=HS_TILES,
        rule_name="train",
    log:
        f"{LOGS}/train/{{variant}}.log",
    threads: TRAIN["nproc"]
    resources:
        mem_mb=4000,
        runtime=60,
        **rank_resources(TRAIN_PLACEMENT),  # nodes, tasks; under Slurm the rule launches its ranks itself
    conda:
        "../../envs/train.yaml"
    shell:
        # Resumable checkpoints live in {params.run_dir}/checkpoints, which is deliberately
        # not an output: Snakemake deletes outputs before a rerun, which would defeat resuming.
        "( {params.launch} train --config $DCHAG_CONFIG --rule {params.rule_name} --variant {wildcards.variant} "
        "--output-dir {params.run_dir} --assembled {params.assembled} --tiles {params.tiles} ) > {log} 2>&1"
