# Entry points: `make pipeline` (whole pipeline on the embedded default) and `make test`.
# Both create the environment in .venv first when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv pipeline test mlflow-screenshot test-fast bench bench-frontend bench-loader bench-mae bench-oracles bench-hyperspectral dryrun-slurm clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

# A --configfile is checked by the pipeline's own reader first: Snakemake parses it before the
# workflow runs, and its YAML reader stops on an impossible date with a bare traceback.
pipeline: $(STAMP)
	@set -e; for f in $$(printf '%s\n' $(ARGS) | sed -n -e 's/^--configfile=//p' -e '/^--configfile$$/{n;p;}'); do \
		$(VENV)/bin/python -m pipeline_src.cli config --config "$$f" > /dev/null; done
	$(VENV)/bin/snakemake $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not e2e" $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/python -m pipeline_src.cli bench era5 $(ARGS)

bench-hyperspectral: $(STAMP)
	$(VENV)/bin/python -m pipeline_src.cli bench hyperspectral $(ARGS)

bench-frontend: $(STAMP)
	$(VENV)/bin/python -m pipeline_src.cli bench frontend $(ARGS)

bench-loader: $(STAMP)
	$(VENV)/bin/python -m pipeline_src.cli bench loader $(ARGS)

bench-mae: $(STAMP)
	$(VENV)/bin/python -m pipeline_src.cli bench mae $(ARGS)

bench-oracles: $(STAMP)
	$(VENV)/bin/python -m pipeline_src.cli bench oracles $(ARGS)

dryrun-slurm: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/slurm -n

mlflow-screenshot: $(STAMP)
	bash workflow/scripts/mlflow_screenshot.sh $(ARGS)

clean:
	rm -rf results resources logs .snakemake
