# Memory and throughput (stage 5): D-CHAG vs TP-only measured on this machine's ranks, the
# projection checked against it, the throughput model, and at paper scale (rule report_paper,
# its own job: CPU only, about 16 minutes on 2 cores) the authors' configurations and a planner.

REPORT = CFG.data["report"]
REPORT_DIR = f"{RESULTS}/report"
PAPER_DIR = f"{REPORT_DIR}/paper"


rule report_all:
    input:
        f"{REPORT_DIR}/report.md",


rule report:
    input:
        training=expand(rules.train.output.summary, variant=list(TRAIN_VARIANTS)),
        paper=[f"{PAPER_DIR}/projection.json", f"{PAPER_DIR}/plan.json"] if REPORT["paper_scale"] else [],
    output:
        markdown=f"{REPORT_DIR}/report.md",
        data=f"{REPORT_DIR}/measured.json",
        table=report(f"{REPORT_DIR}/measured.csv", caption="../report/memory.rst", category="Memory and throughput",
                     subcategory="measured"),
        plots=report(directory(f"{REPORT_DIR}/plots"), patterns=["{name}.png"], caption="../report/memory.rst",
                     category="Memory and throughput", subcategory="measured"),
    params:
        config_hash=CFG.section_hash("report"),
        out=parent_folder("markdown"),
        train_dir=lambda wildcards, input: str(Path(input.training[0]).parent.parent),
        paper=lambda wildcards, input: f"--paper {Path(input.paper[0]).parent}" if input.paper else "",
        cli=CLI,
        rule_name="report",
    log:
        f"{LOGS}/report/report.log",
    threads: REPORT["ranks"]
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.cli} report run --config $DCHAG_CONFIG --rule {params.rule_name} --train {params.train_dir} "
        "--output-dir {params.out} {params.paper} > {log} 2>&1"


rule report_paper:
    output:
        projection=f"{PAPER_DIR}/projection.json",
        plan=f"{PAPER_DIR}/plan.json",
        markdown=f"{PAPER_DIR}/paper.md",
        table=report(f"{PAPER_DIR}/projection.csv", caption="../report/paper.rst", category="Memory and throughput",
                     subcategory="projected"),
        plots=report(directory(f"{PAPER_DIR}/plots"), patterns=["{name}.png"], caption="../report/paper.rst",
                     category="Memory and throughput", subcategory="projected"),
    params:
        config_hash=CFG.section_hash("report.plan"),  # the projection itself reads no config key
        out=parent_folder("markdown"),
        cli=CLI,
        rule_name="report_paper",
    log:
        f"{LOGS}/report/paper.log",
    threads: REPORT["processes"]
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.cli} report paper --config $DCHAG_CONFIG --rule {params.rule_name} --output-dir {params.out} "
        "> {log} 2>&1"
