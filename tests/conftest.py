"""Shared fixtures: small configs and raw files written in the real CDS layout."""

from __future__ import annotations

import copy

import pytest

from pipeline_src.config import Config, validate_dict
from pipeline_src.era5.synthetic import write_synthetic

SMALL = {
    "run_name": "test",
    "era5": {
        "source": "synthetic",
        "years": {"train": [2010], "val": [2011], "test": [2012]},
        "hours": [0],
        "channels": ["z_500", "t_850", "u_850", "q_850", "t2m", "u10", "lsm", "orography"],
        "grid_deg": 10.0,
        "synthetic": {"seed": 3},
        "regrid": {"time_chunk": 32},
        "assemble": {"shard_steps": 32, "climatology_window_days": 15},
    },
    "mlflow": {"enabled": False},
    "forecast": {"targets": ["z_500", "t2m"]},
}


def small_config(**era5_overrides) -> Config:
    """The SMALL config with era5 keys replaced, validated."""
    raw = copy.deepcopy(SMALL)
    raw["era5"].update(era5_overrides)
    return Config(validate_dict(raw))


def pytest_collection_modifyitems(items):
    """Fast unit tests first, then the end-to-end workflow, then the real Slurm cluster."""
    rank = {"e2e": 1, "slurm": 2}
    items.sort(key=lambda item: max([0] + [rank[m.name] for m in item.iter_markers() if m.name in rank]))


@pytest.fixture
def cfg() -> Config:
    return small_config()


@pytest.fixture(scope="session")
def raw_files(tmp_path_factory):
    """Synthetic raw files for every (group, period) of the SMALL config (read-only: copy to edit)."""
    cfg = small_config()
    tmp_path = tmp_path_factory.mktemp("raw")
    files = {}
    for group, need in cfg.required.items():
        periods = ["static"] if group == "static" else [str(y) for y in cfg.all_years]
        for period in periods:
            path = tmp_path / "raw" / group / f"{period}.nc"
            write_synthetic(path, group, period, need, cfg.era5)
            files[(group, period)] = path
    return files


@pytest.fixture(scope="session")
def assembled_era5(tmp_path_factory, raw_files):
    """The SMALL config regridded and assembled once per session: (cfg, folder, metrics, regridded files)."""
    import dask

    from pipeline_src.era5.assemble import assemble
    from pipeline_src.era5.regrid import regrid_file

    cfg = small_config()
    tmp = tmp_path_factory.mktemp("asm")
    regridded = {}
    with dask.config.set(scheduler="synchronous"):  # see tests/era5/conftest.py
        for key, raw in raw_files.items():
            regridded[key] = tmp / "regridded" / key[0] / f"{key[1]}.nc"
            regrid_file(cfg, key[0], key[1], raw, regridded[key])
        out = tmp / "assembled"
        metrics = assemble(cfg, regridded, out)
    return cfg, out, metrics, regridded


def load_nc(path):
    """Read a NetCDF file fully and close it (open handles left to the garbage collector
    can be finalised in the middle of another HDF5 call, which crashes HDF5)."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        return ds.load()


def load_raw(*args, **kwargs):
    """open_raw, load into memory, close the file (see load_nc)."""
    from pipeline_src.era5.layout import open_raw

    with open_raw(*args, **kwargs) as ds:
        return ds.load()


@pytest.fixture(autouse=True)
def _collect_file_handles():
    """Close leftover xarray file handles between tests.

    netCDF-C/HDF5 crash when a file holding a string variable (CDS's expver) is opened
    while an earlier handle to it is still open (HDF5 issue 5359); session files are
    reopened by many tests, so no handle may outlive its test.
    """
    import gc

    yield
    gc.collect()
