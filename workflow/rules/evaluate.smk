# Evaluation: one job per trained variant (ranks launched like training), the climatology and
# persistence baselines on the same initialisation times, and one scorecard over all of them.
# Forecasters (rule evaluate) also export their forecasts and the verifying truth in
# WeatherBench2's layout; the masked autoencoders (rule evaluate_mae) score held-out tiles.


rule evaluate_all:
    input:
        f"{EVAL_DIR}/scorecard.md",


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        **system_outputs("{variant}"),
        forecast=directory(f"{EVAL_DIR}/{{variant}}/forecast.zarr"),
        truth=directory(f"{EVAL_DIR}/{{variant}}/truth.zarr"),
    wildcard_constraints:
        variant=one_of(FORECASTERS),
    params:
        config_hash=CFG.section_hash("evaluate", "forecast"),
        launch=rank_launcher(EVAL_PLACEMENT),
        out=parent_folder("metrics"),
        assembled=ASSEMBLED,
        tiles=HS_TILES,
        rule_name="evaluate",
    log:
        f"{LOGS}/evaluate/{{variant}}.log",
    threads: EVAL_PLACEMENT.ranks
    resources:
        mem_mb=4000,
        runtime=30,
        **rank_resources(EVAL_PLACEMENT),  # nodes, tasks; under Slurm the rule launches its ranks itself
    conda:
        "../../envs/train.yaml"
    shell:
        "( {params.launch} evaluate variant --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--variant {wildcards.variant} --checkpoint {input.checkpoint} --assembled {params.assembled} "
        "--tiles {params.tiles} --output-dir {params.out} ) > {log} 2>&1"


use rule evaluate as evaluate_mae with:
    output:
        **system_outputs("{variant}"),
    wildcard_constraints:
        variant=one_of(MAES),
    params:
        rule_name="evaluate_mae",


rule evaluate_baselines:
    input:
        f"{ASSEMBLED}/manifest.json",
    output:
        **{f"{b}_{k}": v for b in BASELINES for k, v in system_outputs(b).items()},
    params:
        config_hash=CFG.section_hash("evaluate", "forecast"),
        out=lambda wildcards, output: str(Path(output.climatology_metrics).parent.parent),
        assembled=lambda wildcards, input: str(Path(input[0]).parent),
        cli=CLI,
        rule_name="evaluate_baselines",
    log:
        f"{LOGS}/evaluate/baselines.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.cli} evaluate baselines --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--assembled {params.assembled} --output-dir {params.out} > {log} 2>&1"


rule scorecard:
    input:
        variants=expand(f"{EVAL_DIR}/{{variant}}/summary.json", variant=list(TRAIN_VARIANTS)),
        baselines=[rules.evaluate_baselines.output[f"{b}_summary"] for b in BASELINES] if FORECASTERS else [],
        training=expand(rules.train.output.summary, variant=list(TRAIN_VARIANTS)),
    output:
        markdown=f"{EVAL_DIR}/scorecard.md",
        table=report(f"{EVAL_DIR}/scorecard.csv", caption="../report/scorecard.rst", category="Evaluation",
                     subcategory="scorecard"),
        plots=report(directory(f"{EVAL_DIR}/scorecard_plots"), patterns=["{name}.png"],
                     caption="../report/scorecard.rst", category="Evaluation", subcategory="scorecard"),
    params:
        config_hash=CFG.section_hash("evaluate"),
        out=parent_folder("markdown"),
        cli=CLI,
        train_dir=lambda wildcards, input: str(Path(input.training[0]).parent.parent),
        rule_name="scorecard",
    log:
        f"{LOGS}/evaluate/scorecard.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.cli} evaluate scorecard --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--evaluation {params.out} --train {params.train_dir} --output-dir {params.out} > {log} 2>&1"
