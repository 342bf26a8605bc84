# D-CHAG pipeline. Plain `snakemake` runs the embedded default (profiles/default);
# `snakemake --profile profiles/slurm` or `--profile profiles/frontier` submit to Slurm.
from snakemake.utils import min_version

from pipeline_src import config as pipeline_config

min_version("9.0")


# `--configfile my.yaml` replaces config.yaml (it is not laid on top of it): a run of my.yaml is
# exactly what `dchag config --config my.yaml` shows. `--config KEY=VALUE` overrides either.
# config.yaml is read by the project's loader first, so that an impossible date (2015-02-30)
# names its file and line instead of ending Snakemake's own YAML read in a traceback.
if not workflow.config_settings.configfiles:
    try:
        pipeline_config.read_yaml("config.yaml")
    except pipeline_config.ConfigError as err:
        raise WorkflowError(f"invalid configuration: {err}")

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
