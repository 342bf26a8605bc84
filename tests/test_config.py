import re

import pytest
import yaml

from pipeline_src import config
from pipeline_src.io import ConfigError
from tests.conftest import SMALL, small_config


def test_defaults_are_filled():
    cfg = config.Config(config.validate_dict({"era5": {"source": "synthetic",
                                                       "years": {"train": [2000], "val": [2001], "test": [2002]}}}))
    assert cfg.era5["regrid"] == {"backend": "auto", "method": "bilinear", "time_chunk": 64, "target_grid_deg": 5.625}
    assert cfg.era5["hours"] == [0, 6, 12, 18]
    assert len(cfg.channels) == 80  # the paper preset
    assert cfg.mlflow["experiment"] == "dchag"


def test_paper_preset_has_80_channels_in_groups():
    cfg = small_config(channels="paper")
    need = cfg.required
    assert len(cfg.channels) == 80
    assert need["pressure"]["vars"] == ["z", "t", "u", "v", "q"]
    assert len(need["pressure"]["levels"]) == 15
    assert need["single"]["vars"] == ["t2m", "u10", "v10"]
    assert need["static"]["vars"] == ["lsm", "z"]


@pytest.mark.parametrize("override, message", [
    ({"channels": ["z_500", "zz_500"]}, "unknown channel 'zz_500'"),
    ({"channels": ["t_123"]}, "123 hPa is not an ERA5 pressure level"),
    ({"years": {"train": [2010, 2011], "val": [2011], "test": [2012]}}, "2011 is in both train and val"),
    ({"years": {"train": [], "val": [2011], "test": [2012]}}, "era5.years.train"),
    ({"grid_deg": 0.7}, "does not divide 360"),
    ({"source": "ftp"}, "era5.source"),
    ({"regrid": {"method": "cubic"}}, "era5.regrid.method"),
    ({"bogus": 1}, "Additional properties are not allowed ('bogus'"),
])
def test_bad_config_is_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        small_config(**override)
    assert message in str(err.value)


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("era5: [unclosed")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "missing.yaml")
    good = tmp_path / "g.yaml"
    good.write_text(yaml.safe_dump(SMALL))
    assert config.load(good).era5["grid_deg"] == 10.0


def test_shipped_config_is_valid():
    cfg = config.load(config.REPO_ROOT / "config.yaml")
    assert cfg.era5["source"] == "synthetic"
    assert [c.name for c in cfg.channels][-2:] == ["lsm", "orography"]


def test_nested_command_line_values_become_numbers():
    """Snakemake's --config train='{steps: 400}' arrives as strings; the schema's types win."""

    raw = {**SMALL, "train": {"steps": "400", "lr": "2e-3", "micro_batch": "8"},
           "evaluate": {"bootstrap": {"level": "0.9"}}, "mlflow": {"enabled": "false"}}
    cfg = config.validate_dict(raw)
    assert cfg["train"]["steps"] == 400 and cfg["train"]["lr"] == 0.002 and cfg["train"]["micro_batch"] == 8
    assert cfg["evaluate"]["bootstrap"]["level"] == 0.9 and cfg["mlflow"]["enabled"] is False
    # inside one form of several (evaluate.mesh is null or a mapping): README's layout override
    cfg = config.validate_dict({**SMALL, "evaluate": {"nproc": "8", "mesh": {"tp": "2", "dp": "4"}}})
    assert cfg["evaluate"]["nproc"] == 8 and cfg["evaluate"]["mesh"] == {"tp": 2, "fsdp": 1, "dp": 4}
    with pytest.raises(ConfigError, match=re.escape("evaluate.mesh: [tp]: 'two' is not of type 'integer'")):
        config.validate_dict({**SMALL, "evaluate": {"nproc": "8", "mesh": {"tp": "two"}}})
    with pytest.raises(ConfigError, match="train.steps: 'many' is not of type 'integer'"):
        config.validate_dict({**SMALL, "train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="train.steps: '4.5' is not of type 'integer'"):
        config.validate_dict({**SMALL, "train": {"steps": "4.5"}})


@pytest.mark.parametrize("channels, message", [
    (["z_500", "T2M"], "era5.channels: 'T2M' is not a valid name: names are lower case ('t2m'?)"),
    ("papr", "era5.channels: 'papr' is none of: 'paper', 'tiny'; array"),
    (["z_500", 5], "era5.channels: [1]: 5 is not of type 'string'"),
])
def test_channel_errors_say_why(channels, message):
    raw = {"era5": {"source": "synthetic", "years": {"train": [2010], "val": [2011], "test": [2012]},
                    "channels": channels}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate_dict(raw)


def test_an_impossible_date_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("era5:\n  source: synthetic\n  years:\n    train: [2010]\n    val: [2011]\n"
                    "    test: {start: 2015-02-01, end: 2015-02-30}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: line 6: 2015-02-30 is not a date (day is out of range "
                                                    "for month): test: {start: 2015-02-01, end: 2015-02-30}")):
        config.load(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["--configfile {}", "--configfile={}"])
def test_make_pipeline_checks_a_configfile_before_snakemake_reads_it(tmp_path, form):
    """Snakemake reads --configfile itself (an impossible date is a bare traceback there); the
    README's `make pipeline` runs the pipeline's own reader on it first."""
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text("era5:\n  years:\n    test: {start: 2015-02-01, end: 2015-02-30}\n")
    proc = subprocess.run(["make", "-s", "pipeline", f"ARGS=-n {form.format(bad)}"], cwd=config.REPO_ROOT,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode != 0
    assert f"error: {bad}: line 3: 2015-02-30 is not a date" in proc.stderr
    assert "Traceback" not in proc.stderr and "snakemake" not in proc.stderr.lower()


def test_forecast_targets_follow_the_channels_unless_given():
    raw = {"era5": {"source": "synthetic", "years": {"train": [2010], "val": [2011], "test": [2012]},
                    "channels": ["z_500", "t_850", "t2m", "lsm"]}}
    assert config.validate_dict(raw)["forecast"]["targets"] == ["z_500", "t_850", "t2m"]
    with pytest.raises(ConfigError, match=re.escape("forecast.targets: ['u10'] are not among era5.channels")):
        config.validate_dict({**raw, "forecast": {"targets": ["z_500", "u10"]}})
    only_static = {"era5": dict(raw["era5"], channels=["lsm", "q_850"])}
    with pytest.raises(ConfigError, match=re.escape("none of the default targets [")):
        config.validate_dict(only_static)


def test_the_configuration_reference_in_docs_is_the_schema():
    text = (config.REPO_ROOT / "docs" / "configuration.md").read_text()
    generated = text.split("<!-- generated by: dchag config --reference -->\n")[1].split("<!-- end of generated")[0]
    assert generated == config.reference_markdown(), "regenerate: dchag config --reference"
    for key in ("hpc.ranks_per_node", "train.checkpoint_async", "evaluate.note", "train.variants[].arch"):
        assert f"| `{key}` |" in generated
