# D-CHAG pipeline. Plain `snakemake` runs the embedded default (profiles/default);
# `snakemake --profile profiles/slurm` or `--profile profiles/frontier` submit to Slurm.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# Validated once, against workflow/schemas/config.schema.yaml, in workflow/rules/common.smk.


include: "workflow/rules/common.smk"
include: "workflow/rules/era5.smk"
include: "workflow/rules/hyperspectral.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.era5_all.input,
        rules.hs_all.input,
        rules.train_all.input,
        rules.evaluate_all.input,
        rules.report_all.input,
    default_target: True
