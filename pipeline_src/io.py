"""Atomic writes, manifests and clear input errors shared by every stage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


class InputError(Exception):
    """A bad input file or value: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(InputError):
    """A configuration value that the pipeline cannot run with."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it onto `final` only on success.

    Works for files and for directories (Zarr stores). On any exception the
    temporary is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{final}: writer produced nothing at {tmp}")
        if final.exists() or final.is_symlink():
            _remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as pretty JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file, with an error naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def tree_size(path: str | os.PathLike) -> int:
    """Bytes held by a file or by every file below a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
