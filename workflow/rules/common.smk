# Paths, the effective config file that every CLI call reads, and the MLflow parent run.
import os
import re
import sys
from pathlib import Path

import yaml

from pipeline_src import config as pipeline_config
from pipeline_src import tracking

# Full validation (schema + semantic checks such as overlapping split years) with a
# message naming the bad key; the schema defaults are filled in here.
try:
    CFG = pipeline_config.Config(pipeline_config.validate_dict(config, "config"))
except pipeline_config.ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}")

RESULTS = "results"
RESOURCES = "resources"
LOGS = "logs"
EFFECTIVE_CONFIG = f"{RESULTS}/config.effective.yaml"


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


onstart:
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
