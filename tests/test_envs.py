"""The conda environments of envs/ hold what their rules' jobs import.

Under `snakemake --sdm conda` each rule runs `python -m pipeline_src.cli <stage> [<sub>]` in the
env its `conda:` directive names. Which commands run in which env is read from the rule files;
each command's imports are walked over the package source with `ast` (module-level and
function-level imports, relative ones included, through every pipeline_src module reached);
every third-party module found must be provided by a dependency of that env (conda or pip).
No network, no conda: the files are only read.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pipeline_src.cli import build_parser
from pipeline_src.config import REPO_ROOT

RULES = REPO_ROOT / "workflow" / "rules"
CLI_FILE = REPO_ROOT / "pipeline_src" / "cli.py"
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"

# import name -> the env dependency names (conda-forge or pip) that provide it; a name not
# listed is provided by the dependency of the same name (lower case, "_" as "-").
PROVIDERS = {
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "torch"},  # train.yaml: the pip wheel only (test below)
    "netCDF4": {"netcdf4"},
    "xarray_regrid": {"xarray-regrid"},
    "spectral": {"spectral"},
    "sklearn": {"scikit-learn"},
    "PIL": {"pillow"},
}
# conda-forge name -> PyPI name, for looking a pin up in requirements/constraints.txt
PYPI_NAME = {"pytorch": "torch"}

# What a job needs that no import statement names: xarray loads its backends itself.
ENGINES = {"netcdf4": "netCDF4", "h5netcdf": "h5netcdf", "zarr": "zarr", "scipy": "scipy"}
ZARR_CALLS = {"to_zarr", "open_zarr"}
OPEN_CALLS = {"open_dataset", "open_dataarray", "open_zarr", "open_mfdataset"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _providers(module: str) -> set[str]:
    return PROVIDERS.get(module, {_normalize(module)})


def _third_party(name: str) -> str | None:
    top = name.split(".")[0]
    if not top or top == "pipeline_src" or top in sys.stdlib_module_names:
        return None
    return top


def _module_file(name: str) -> Path | None:
    path = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _walk_nodes(nodes):
    """Every node under `nodes`, skipping `if TYPE_CHECKING:` bodies (never run)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _scan(nodes, module: str, is_package: bool):
    """(pipeline_src modules imported, {third-party module: why}) of some statements of `module`."""
    internal, external = set(), {}
    imports_xarray = False
    nodes = list(nodes)
    for node in _walk_nodes(nodes):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            names = []
        for name in names:
            imports_xarray |= name.split(".")[0] == "xarray"
            if name.split(".")[0] == "pipeline_src":
                parts = name.split(".")
                internal.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif top := _third_party(name):
                external.setdefault(top, f"import {name}")
    for node in _walk_nodes(nodes):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("gs://"):
            external.setdefault("gcsfs", "a gs:// store (fsspec)")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        for kw in node.keywords:
            if kw.arg == "engine" and isinstance(kw.value, ast.Constant) and kw.value.value in ENGINES:
                external.setdefault(ENGINES[kw.value.value], f"xarray engine={kw.value.value!r}")
            if (kw.arg == "chunks" and called in OPEN_CALLS
                    and not (isinstance(kw.value, ast.Constant) and kw.value.value is None)):
                external.setdefault("dask", f"xarray {called}(chunks=...)")
        if called in ZARR_CALLS:
            external.setdefault("zarr", f"xarray {called}")
        if called == "open_mfdataset" or (called == "chunk" and imports_xarray):
            external.setdefault("dask", f"xarray {called}")
        if called in ("find_spec", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            if top := _third_party(str(node.args[0].value)):
                external.setdefault(top, f"{called}({node.args[0].value!r})")
    return internal, external


def _closure(command: str) -> dict[str, str]:
    """{third-party module: where and why} of `python -m pipeline_src.cli` running `command`
    (a cmd_* function of cli.py): cli.py's module level, that function, and every pipeline_src
    module they reach."""
    tree = ast.parse(CLI_FILE.read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == command]
    assert funcs, f"pipeline_src/cli.py has no {command}"
    top_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    internal, external = _scan(top_level + funcs, "pipeline_src.cli", False)
    needs = {mod: f"pipeline_src.cli ({command}): {why}" for mod, why in external.items()}
    todo, seen = sorted(internal | {"pipeline_src"}), {"pipeline_src.cli"}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:  # a name imported from a module, not a module
            continue
        more, external = _scan([ast.parse(path.read_text())], module, path.name == "__init__.py")
        for mod, why in external.items():
            needs.setdefault(mod, f"{module}: {why}")
        todo.extend(sorted(more - seen))
    return needs


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command(words: list[str]) -> str:
    """The cmd_* function that `dchag <words>` runs."""
    parser = build_parser()
    for word in words:
        choices = _subparsers(parser)
        if not choices:
            break
        assert word in choices, f"dchag {' '.join(words)}: no subcommand {word!r}"
        parser = choices[word]
    assert not _subparsers(parser), f"dchag {' '.join(words)} needs a further subcommand"
    return parser.get_default("func").__name__


def _rules():
    """(rule file, rule, env path, cli words, launched by rank_launcher, block) of every rule that
    runs a shell; a `use rule A as B with:` keeps what it does not override from A."""
    out, parsed = [], {}
    for smk in sorted(RULES.glob("*.smk")):
        starts = r"(?:rule|checkpoint)\s+\w+\s*:|use\s+rule\s+\w+\s+as\s+\w+\s+with\s*:"
        for block in re.split(rf"^(?={starts})", smk.read_text(), flags=re.M):
            head = re.match(r"(?:rule|checkpoint)\s+(\w+)\s*:|use\s+rule\s+(\w+)\s+as\s+(\w+)", block)
            if not head:
                continue
            name, base = (head.group(1), None) if head.group(1) else (head.group(3), parsed.get(head.group(2)))
            conda = re.search(r"^\s+conda:\s*\n\s*\"([^\"]+)\"", block, re.M)
            call = re.search(r"\{params\.(?:cli|launch)\}([^\"\n]*)", block)
            env = (smk.parent / conda.group(1)).resolve() if conda else None
            words = None
            if call:  # the subcommand words: up to the first option, placeholder or redirection
                words = []
                for word in call.group(1).split():
                    if not re.fullmatch(r"[a-z][\w-]*", word):
                        break
                    words.append(word)
            launcher = bool(re.search(r"^\s+launch=rank_launcher\(", block, re.M))
            runs = bool(re.search(r"^\s+(?:shell|script|run|notebook|wrapper):", block, re.M))
            if base is not None:
                env = env or base[2]
                words = words if call else base[3]
                launcher = launcher or (base[4] and not re.search(r"^\s+launch=", block, re.M))
                runs, block = True, base[5] + block
            parsed[name] = (smk.name, name, env, words, launcher, block)
            if runs:
                out.append(parsed[name])
    return out


def _env_rules() -> dict[Path, list[tuple[str, str, bool]]]:
    """{env file: [(rule, cmd_* function, launched by rank_launcher)]}."""
    envs = defaultdict(list)
    for smk, rule, env, words, launcher, _ in _rules():
        if env is not None and words is not None:
            envs[env].append((rule, _command(words), launcher))
    return dict(envs)


def _dependencies(env: Path) -> tuple[dict[str, str], list[str]]:
    """({normalized name: version spec} of the conda and pip dependencies, pip lines)."""
    deps, pip_lines = {}, []
    for item in yaml.safe_load(env.read_text())["dependencies"]:
        if isinstance(item, dict):
            pip_lines = [str(line) for line in item.get("pip", [])]
            for line in pip_lines:
                if not line.startswith("-"):
                    req = Requirement(line)
                    deps[_normalize(req.name)] = str(req.specifier)
        else:
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", str(item)).groups()
            deps[_normalize(name)] = spec.strip()
    return deps, pip_lines


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].split("==")
            pins[_normalize(name.strip())] = version.strip()
    return pins


def test_every_rule_that_runs_the_cli_names_an_env_and_a_known_command():
    rules = _rules()
    assert len(rules) >= 10, "the rule files were not parsed"
    for smk, rule, env, words, launcher, block in rules:
        assert env is not None, f"{smk}: rule {rule} has no conda: env"
        assert env.is_file() and env.parent == (REPO_ROOT / "envs").resolve(), (
            f"{smk}: rule {rule}: {env} is not a file of envs/")
        assert words, f"{smk}: rule {rule} runs no {{params.cli}}/{{params.launch}} command"
        param = "cli=CLI" if "{params.cli}" in block else "launch=rank_launcher("
        assert re.search(rf"^\s+{re.escape(param)}", block, re.M), f"{smk}: rule {rule} lacks {param}"
        _command(words)  # resolves to a cmd_* function of pipeline_src/cli.py


def test_the_rules_use_the_envs_as_expected():
    """A second view of what the rule files say, so a moved rule shows up here by name."""
    by_env = {env.name: sorted(rule for rule, _, _ in rules) for env, rules in _env_rules().items()}
    assert sorted(by_env) == sorted(p.name for p in (REPO_ROOT / "envs").glob("*.yaml"))
    assert {"era5_acquire", "era5_regrid", "era5_assemble"} <= set(by_env["era5.yaml"])
    assert {"hs_acquire", "hs_preprocess", "hs_tiles"} <= set(by_env["hyperspectral.yaml"])
    assert {"train", "evaluate", "evaluate_mae", "evaluate_baselines", "scorecard", "report", "report_paper"} <= set(
        by_env["train.yaml"])


@pytest.mark.parametrize("env_name", ["era5.yaml", "hyperspectral.yaml", "train.yaml"])
def test_env_holds_every_package_its_rules_import(env_name):
    env = (REPO_ROOT / "envs" / env_name).resolve()
    rules = _env_rules()[env]
    deps, _ = _dependencies(env)
    missing = []
    for rule, command, launcher in rules:
        needs = _closure(command)
        if launcher:  # torchrun locally: python -m torch.distributed.run
            needs.setdefault("torch", "the rank launcher (python -m torch.distributed.run)")
        for module, why in sorted(needs.items()):
            if not _providers(module) & deps.keys():
                missing.append(f"{' or '.join(sorted(_providers(module)))} (module {module}; rule {rule}, {why})")
    assert not missing, f"envs/{env_name} lacks:\n  " + "\n  ".join(sorted(set(missing)))


@pytest.mark.parametrize("env_name", ["era5.yaml", "hyperspectral.yaml", "train.yaml"])
def test_env_versions_admit_the_pinned_ones(env_name):
    deps, _ = _dependencies(REPO_ROOT / "envs" / env_name)
    pins = _pins()
    for name, spec in deps.items():
        pinned = pins.get(PYPI_NAME.get(name, name))
        if not spec or pinned is None:
            continue
        if re.fullmatch(r"=[^=<>!,]+", spec):  # conda's fuzzy pin: =1.2 means 1.2.*
            spec = f"={spec}.*"
        assert Version(pinned) in SpecifierSet(spec), (
            f"envs/{env_name}: {name}{spec} refuses {pinned}, the version requirements/constraints.txt pins")


def test_train_env_takes_torch_from_the_pytorch_rocm_index_at_the_pinned_version():
    _, pip_lines = _dependencies(REPO_ROOT / "envs" / "train.yaml")
    conda = [str(d) for d in yaml.safe_load((REPO_ROOT / "envs" / "train.yaml").read_text())["dependencies"]
             if not isinstance(d, dict)]
    assert not [d for d in conda if re.match(r"(py)?torch\b", d)], "torch must not come from conda-forge (no ROCm)"
    assert "pip" in conda, "the pip section needs pip in the env"
    assert pip_lines and re.fullmatch(r"--index-url https://download\.pytorch\.org/whl/rocm\d+(\.\d+)+",
                                      pip_lines[0]), f"the pip section must start with a ROCm --index-url: {pip_lines}"
    torch_lines = [line for line in pip_lines if re.match(r"torch\b", line)]
    assert torch_lines == [f"torch=={_pins()['torch']}"], (
        f"train.yaml's pip torch {torch_lines} must equal requirements/constraints.txt's torch=={_pins()['torch']}")
