"""Typed view of config.yaml: load, fill schema defaults, validate, check semantics."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from .era5 import periods
from .era5.channels import Channel, required_fields, resolve_channels
from .io import ConfigError
from .placement import Placement, place

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
SPLITS = ("train", "val", "test")
# The evaluation's baselines (each a folder under results/evaluation/), so no variant may take their names
BASELINES = ("climatology", "persistence", "damped_persistence")
RESERVED_NAMES = (*BASELINES, "scorecard_plots")


def _with_defaults(validator_class):
    """A jsonschema validator that fills `default` values while validating."""
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema() -> dict:
    """The pipeline's JSON schema (workflow/schemas/config.schema.yaml)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_dict(raw: dict, source: str = "config") -> dict:
    """Fill defaults and validate a config dict; raise ConfigError naming the bad key."""
    cfg = copy.deepcopy(raw) if raw is not None else {}
    if isinstance(cfg.get("era5"), dict) and isinstance(cfg["era5"].get("years"), dict):
        cfg["era5"]["years"] = periods.normalise_dates(cfg["era5"]["years"])  # YAML reads 2015-06-01 as a date
    targets_given = isinstance(cfg.get("forecast"), dict) and "targets" in cfg["forecast"]
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    # Defaults are filled while validating, so validate twice: the second pass checks
    # the filled-in defaults themselves against their sub-schemas.
    for _ in range(2):
        errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
        while errors and _coerce_strings(cfg, errors):  # `--config train='{steps: 400}'`
            errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            raise ConfigError(source, f"{where}: {_reason(err)}")
    if not targets_given:
        _default_targets(cfg, source)
    _check_semantics(cfg, source)
    return cfg


def _default_targets(cfg: dict, source: str) -> None:
    """forecast.targets left out: the default targets that era5.channels holds, in the default's order."""
    try:
        names = [c.name for c in resolve_channels(cfg["era5"]["channels"])]
    except ConfigError:
        return  # reported by the semantic checks
    present = [t for t in cfg["forecast"]["targets"] if t in names]
    if not present and any(v["task"] == "forecast" for v in cfg["train"]["variants"]):
        raise ConfigError(source, f"forecast.targets: none of the default targets {cfg['forecast']['targets']} is "
                                  f"among era5.channels {names}; set forecast.targets to the channels to forecast")
    cfg["forecast"]["targets"] = present or cfg["forecast"]["targets"]


def _reason(err) -> str:
    """The schema error in words. For a value that fits none of several forms (oneOf), the
    reason it fails the form of its own kind (a list item in capitals, a number below the
    minimum), or the forms it could take."""
    if err.validator not in ("oneOf", "anyOf") or not err.context:
        return err.message
    wrong_kind = {e.schema_path[0] for e in err.context if e.validator in ("type", "const", "enum") and not e.path}
    near = [e for e in err.context if e.schema_path[0] not in wrong_kind]
    if not near:
        forms = [", ".join(map(repr, sub["enum"])) if "enum" in sub else f"{sub.get('type', sub.get('const'))}"
                 for sub in err.validator_value]
        return f"{err.instance!r} is none of: {'; '.join(forms)}"
    closest = max(near, key=lambda e: len(e.path))
    value = closest.instance
    if closest.validator == "pattern" and isinstance(value, str) and re.fullmatch(closest.validator_value, value.lower()):
        return f"{value!r} is not a valid name: names are lower case ({value.lower()!r}?)"
    where = "".join(f"[{p}]" for p in closest.path)
    return f"{where + ': ' if where else ''}{closest.message}"


SCALAR_TYPES = {"integer": int, "number": (int, float), "boolean": bool}


def _scalar(text: str):
    """'400' -> 400, '2e-3' -> 0.002, 'false' -> False; None when it is none of these."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}.get(text.strip().lower())


def _coerce_strings(cfg: dict, errors) -> bool:
    """Turn strings such as '400' into the number or boolean the schema asks for (Snakemake's
    --config passes nested values as strings); True if anything changed."""
    changed = False
    for err in errors:
        # A value inside one form of several (evaluate.mesh: null or {tp: ...}) fails as the whole
        # oneOf; its branches' own errors name the string inside it.
        if err.validator in ("oneOf", "anyOf") and err.context and _coerce_strings(cfg, err.context):
            changed = True
            continue
        if err.validator == "type":
            wanted = err.validator_value
        elif err.validator in ("oneOf", "anyOf"):  # e.g. null or an integer
            wanted = [t for branch in err.validator_value for t in _as_list(branch.get("type"))]
        else:
            wanted = None
        wanted = _as_list(wanted)
        if not isinstance(err.instance, str) or not any(t in SCALAR_TYPES for t in wanted):
            continue
        value = _scalar(err.instance)
        ok = any(isinstance(value, SCALAR_TYPES[t]) and not (t != "boolean" and isinstance(value, bool))
                 for t in wanted if t in SCALAR_TYPES)
        if not ok or not err.absolute_path:
            continue
        *parents, last = list(err.absolute_path)
        target = cfg
        for key in parents:
            target = target[key]
        target[last] = value
        changed = True
    return changed


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def _check_semantics(cfg: dict, source: str) -> None:
    for problem in periods.problems(cfg["era5"]["years"]):
        raise ConfigError(source, problem)
    try:
        resolve_channels(cfg["era5"]["channels"])
    except ConfigError as err:
        raise ConfigError(source, f"era5.channels: {err.problem}") from None
    _check_training(cfg, source)
    _check_forecast_splits(cfg, source)
    _check_era5_files(cfg, source)
    _check_hyperspectral(cfg["hyperspectral"], source)
    grid = cfg["era5"]["grid_deg"]
    if abs(360 / grid - round(360 / grid)) > 1e-9:
        raise ConfigError(source, f"era5.grid_deg: {grid} does not divide 360")


def variant_model(cfg: dict, variant: dict) -> dict:
    """The model settings of one training variant: the model section, overridden by the variant's."""
    return {**cfg["model"], **variant.get("model", {}), "arch": variant["arch"]}


def _check_training(cfg: dict, source: str) -> None:
    train = cfg["train"]
    names = [v["name"] for v in train["variants"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(source, f"train.variants: duplicate names {dupes}")
    reserved = sorted(set(names) & set(RESERVED_NAMES))
    if reserved:
        raise ConfigError(source, f"train.variants: {reserved} name evaluation outputs of the baselines; "
                                  f"choose other variant names")
    channel_names = [c.name for c in resolve_channels(cfg["era5"]["channels"])]
    unknown = [t for t in cfg["forecast"]["targets"] if t not in channel_names]
    if unknown and any(v["task"] == "forecast" for v in train["variants"]):
        raise ConfigError(source, f"forecast.targets: {unknown} are not among era5.channels")
    mesh = train["mesh"]
    tp, fsdp, dp = mesh["tp"], mesh["fsdp"], mesh["dp"]
    per_job = tp * fsdp * (1 if dp == "auto" else dp)
    if train["nproc"] % per_job or (dp != "auto" and train["nproc"] != per_job):
        raise ConfigError(source, f"train.nproc {train['nproc']} is not a product of the mesh "
                                  f"(dp {dp} x fsdp {fsdp} x tp {tp})")
    ev_nproc, ev_mesh = job_layout(cfg, "evaluate")
    ev_per_job = ev_mesh["tp"] * ev_mesh["fsdp"] * (1 if ev_mesh["dp"] == "auto" else ev_mesh["dp"])
    if ev_nproc % ev_per_job or (ev_mesh["dp"] != "auto" and ev_nproc != ev_per_job):
        raise ConfigError(source, f"evaluate.nproc {ev_nproc} is not a product of the evaluation mesh {ev_mesh}")
    for key in ("train", "evaluate"):
        try:
            job_placement(cfg, key)
        except ConfigError as err:
            raise ConfigError(source, f"{err.path}: {err.problem}") from None
    for v in train["variants"]:
        m = variant_model(cfg, v)
        where = f"train.variants[{v['name']}]"
        if v["task"] == "mae" and cfg["mae"]["source"] == "hyperspectral":
            continue  # band count known once the tiles exist; checked at launch (check_tp)
        channels = len(channel_names) if v["task"] == "forecast" else cfg["mae"]["bands"]
        for key in ("heads", "agg_heads"):
            if m["dim"] % m[key] or m[key] % tp:
                raise ConfigError(source, f"{where}: model.{key} {m[key]} must divide dim "
                                          f"{m['dim']} and be divisible by tp {tp}")
        if v["arch"] == "tp-baseline":
            continue
        if tp > channels:
            raise ConfigError(source, f"{where}: tp {tp} is larger than the {channels} input channels")
        parts = tp if m["partitions"] == "auto" else m["partitions"]
        if parts % tp or parts > channels:
            raise ConfigError(source, f"{where}: model.partitions {parts} must be a multiple of "
                                      f"tp {tp} and at most the {channels} channels")
        smallest = channels // parts
        if m["tree"] and max(m["tree"]) > smallest:
            raise ConfigError(source, f"{where}: model.tree {m['tree']} has more groups than the "
                                      f"{smallest} channels of the smallest partition")


def job_layout(cfg: dict, stage: str) -> tuple[int, dict]:
    """(ranks, mesh {tp, fsdp, dp}) of a training or evaluation job (stage: train | evaluate); the
    evaluation's default to the training's."""
    train, ev = cfg["train"], cfg["evaluate"]
    ranks = train["nproc"] if stage == "train" else ev["nproc"] or train["nproc"]
    mesh = train["mesh"] if stage == "train" else ev["mesh"] or train["mesh"]
    return ranks, {"tp": mesh["tp"], "fsdp": mesh.get("fsdp", 1), "dp": mesh.get("dp", "auto")}


def job_placement(cfg: dict, stage: str) -> Placement:
    """Nodes and tasks per node of a training or evaluation job (stage: train | evaluate)."""
    ranks, mesh = job_layout(cfg, stage)
    return place(ranks, cfg["hpc"]["ranks_per_node"], mesh["tp"], f"{stage}.nproc {ranks} at tp {mesh['tp']}")


def _check_forecast_splits(cfg: dict, source: str) -> None:
    """The splits forecasts train and verify on must be unbroken and longer than the longest lead."""
    if not any(v["task"] == "forecast" for v in cfg["train"]["variants"]):
        return
    years, longest = cfg["era5"]["years"], max(cfg["forecast"]["lead_days"])
    for split in dict.fromkeys(("train", cfg["evaluate"]["split"])):
        broken = periods.gaps(years, split)
        if broken:
            raise ConfigError(source, f"{broken}; forecasts need one unbroken time series per split")
        days = len(periods.split_days(years, split))
        if days <= longest:
            raise ConfigError(source, f"era5.years.{split}: {periods.describe(years, split)} is {days} "
                                      f"day(s); the {longest:g}-day lead (forecast.lead_days) needs a "
                                      f"longer {split} split")


def _check_era5_files(cfg: dict, source: str) -> None:
    """source: files needs a path pattern for every file group the channels use."""
    era5 = cfg["era5"]
    if era5["source"] != "files":
        return
    lost = [g for g in required_fields(resolve_channels(era5["channels"])) if not era5["files"].get(g)]
    if lost:
        raise ConfigError(source, f"era5.files: source 'files' needs a path pattern for "
                                  f"{', '.join(lost)} (the channels use them)")


def _check_hyperspectral(hs: dict, source: str) -> None:
    if hs["source"] == "files" and not hs["files"]:
        raise ConfigError(source, "hyperspectral.files: source 'files' needs at least one {name, raw, white, dark}")
    names = [f["name"] for f in hs["files"]]
    if len(set(names)) != len(names):
        raise ConfigError(source, "hyperspectral.files: image names must be unique")
    lo, hi = hs["bands"]["trim_nm"]
    if lo >= hi:
        raise ConfigError(source, f"hyperspectral.bands.trim_nm: {lo} is not below {hi}")
    if hs["splits"]["val"] + hs["splits"]["test"] >= 1:
        raise ConfigError(source, "hyperspectral.splits: val + test must leave images for training")


class _DateCheckingLoader(yaml.SafeLoader):
    """YAML's safe loader, except that an unquoted impossible date (2015-02-30) is an error that
    says where it is, where PyYAML raises a bare ValueError."""


class _BadDate(Exception):
    pass


def _timestamp(loader: yaml.SafeLoader, node):
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError as err:
        raise _BadDate(node.start_mark.line, node.value, err) from None


_DateCheckingLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def read_yaml(path: str | Path):
    """The YAML document at path; ConfigError naming the file for a missing file, bad YAML or an
    impossible date (with its line)."""
    path = Path(path)
    try:
        text = path.read_text()
        return yaml.load(text, Loader=_DateCheckingLoader)
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(path, f"not valid YAML ({err})") from None
    except _BadDate as bad:
        line, value, err = bad.args
        raise ConfigError(path, f"line {line + 1}: {value} is not a date ({err}): "
                                f"{text.splitlines()[line].strip()}") from None


def load(path: str | Path) -> "Config":
    """Read, default-fill and validate a YAML config file."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(path, "config must be a mapping at the top level")
    return Config(validate_dict(raw, str(path)))


@dataclass(frozen=True)
class Config:
    """The validated configuration; stages read their settings through it."""

    data: dict

    @property
    def era5(self) -> dict:
        """The era5 section, defaults filled."""
        return self.data["era5"]

    @property
    def hyperspectral(self) -> dict:
        """The hyperspectral section, defaults filled."""
        return self.data["hyperspectral"]

    def hyperspectral_images(self) -> list[str]:
        """Names of the hyperspectral images the stage processes, in order."""
        hs = self.hyperspectral
        if hs["source"] == "files":
            return [f["name"] for f in hs["files"]]
        return [f"plant_{i:03d}" for i in range(hs["synthetic"]["images"])]

    @property
    def mlflow(self) -> dict:
        """The mlflow section, defaults filled."""
        return self.data["mlflow"]

    def variant(self, name: str) -> dict:
        """One entry of train.variants by name: merged model settings under 'model', its overrides of train under 'train'."""
        for v in self.data["train"]["variants"]:
            if v["name"] == name:
                return {**v, "model": variant_model(self.data, v), "train": dict(v.get("train", {}))}
        raise ConfigError("train.variants", f"no variant named {name!r}")

    @property
    def channels(self) -> list[Channel]:
        """Channels to assemble, in order."""
        return resolve_channels(self.era5["channels"])

    @property
    def required(self) -> dict[str, dict]:
        """Raw variables and levels needed per file group (pressure, single, static)."""
        return required_fields(self.channels)

    @property
    def all_years(self) -> list[int]:
        """Every calendar year any split touches (one file per group and year), sorted."""
        return periods.all_years(self.era5["years"])

    def section_hash(self, *keys: str) -> str:
        """Short stable hash of config sections: rerun triggers for Snakemake params."""
        sub = {k: _dig(self.data, k) for k in keys}
        return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()[:12]


def reference_markdown() -> str:
    """The configuration reference as a Markdown table, generated from the schema: every key with
    its type, default and description (docs/configuration.md holds it; a test keeps them equal)."""
    schema = load_schema()
    rows = ["| key | type | default | description |", "|---|---|---|---|"]

    def kind(sub: dict) -> str:
        if "$ref" in sub:
            sub = schema["$defs"][sub["$ref"].split("/")[-1]]
        if "enum" in sub:
            return " \\| ".join(f"`{v}`" for v in sub["enum"])
        if "const" in sub:
            return f"`{sub['const']}`"
        for key in ("oneOf", "anyOf"):
            if key in sub:
                return " or ".join(kind(branch) for branch in sub[key])
        t = sub.get("type", "")
        if t == "array" and isinstance(sub.get("items"), dict):
            return f"list of {kind(sub['items']) or 'items'}"
        return t if isinstance(t, str) else " or ".join(t)

    def walk(props: dict, prefix: str) -> None:
        for key, sub in props.items():
            name = f"{prefix}{key}"
            default = "" if "default" not in sub or isinstance(sub["default"], dict) and sub["default"] == {} \
                else f"`{json.dumps(sub['default'])}`"
            text = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
            rows.append(f"| `{name}` | {kind(sub)} | {default} | {text} |")
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub["properties"], f"{name}.")
            items = sub.get("items")
            if sub.get("type") == "array" and isinstance(items, dict) and "properties" in items:
                walk(items["properties"], f"{name}[].")
            for branch in sub.get("oneOf", []):
                if branch.get("type") == "object" and "properties" in branch:
                    walk(branch["properties"], f"{name}.")

    walk(schema["properties"], "")
    return "\n".join(rows) + "\n"


def _dig(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d
