"""CDS (with a stand-in client that writes real files) and cloud-Zarr sources."""

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline_src.era5.acquire import acquire
from pipeline_src.era5.sources import cds_requests, fetch_cds, fetch_zarr
from pipeline_src.io import InputError
from tests.conftest import load_nc, load_raw, small_config

SECRET = "abcd1234-5678-90ef-secret-token"


class FakeCDS:
    """Plays the CDS: answers each request with a month file in the new CDS layout,
    cut from a full synthetic year; can fail the first `fail` calls."""

    def __init__(self, year_file, fail=0, garbage=False):
        self.year = load_nc(year_file)
        self.calls = []
        self.fail = fail
        self.garbage = garbage

    def retrieve(self, dataset, request, target):
        self.calls.append((dataset, request))
        if self.fail:
            self.fail -= 1
            raise ConnectionError("503 Service Unavailable")
        if self.garbage:
            with open(target, "wb") as fh:
                fh.write(b"<html>queue full</html>")
            return
        month = int(request["month"][0])
        times = pd.DatetimeIndex(self.year.valid_time.values)
        self.year.isel(valid_time=np.flatnonzero(times.month == month)).to_netcdf(target)


@pytest.fixture
def year_file(raw_files):
    return raw_files[("pressure", "2010")]


def test_requests_match_the_cds_api(cfg):
    reqs = cds_requests("pressure", "2012", cfg.required["pressure"], cfg.era5)
    assert len(reqs) == 12
    name, feb = reqs[1]
    assert name == "02" and feb["day"][-1] == "29"  # leap year
    assert feb["variable"] == ["geopotential", "temperature", "u_component_of_wind", "specific_humidity"]
    assert feb["pressure_level"] == ["500", "850"]
    assert feb["data_format"] == "netcdf" and feb["download_format"] == "unarchived"
    assert feb["time"] == ["00:00"] and feb["grid"] == [10.0, 10.0]
    (_, static), = cds_requests("static", "static", cfg.required["static"], cfg.era5)
    assert static["variable"] == ["land_sea_mask", "geopotential"]


def test_download_merge_and_resume(tmp_path, year_file, cfg):
    out = tmp_path / "pressure" / "2010.nc"
    fake = FakeCDS(year_file)
    fetch_cds(out, "pressure", "2010", cfg.required["pressure"], cfg.era5, client_factory=lambda: fake)
    assert len(fake.calls) == 12 and {c[0] for c in fake.calls} == {"reanalysis-era5-pressure-levels"}
    a = load_raw(out, "pressure", cfg.required["pressure"], 10.0, [0], "2010")
    b = load_raw(year_file, "pressure", cfg.required["pressure"], 10.0, [0], "2010")
    xr.testing.assert_allclose(a, b)
    assert [p.name for p in out.parent.iterdir()] == ["2010.nc"]  # parts removed

    # an interrupted earlier run left 3 good months and one broken one: only 9 are fetched
    out2 = tmp_path / "again" / "2010.nc"
    parts = out2.parent / ".2010.parts"
    parts.mkdir(parents=True)
    first = FakeCDS(year_file)
    for m in (1, 2, 3):
        first.retrieve("d", {"month": [f"{m:02d}"]}, parts / f"{m:02d}.nc")
    (parts / "04.nc").write_bytes(b"\x89HDF\r\n\x1a\ntruncated")
    fake2 = FakeCDS(year_file)
    fetch_cds(out2, "pressure", "2010", cfg.required["pressure"], cfg.era5, client_factory=lambda: fake2)
    assert [r["month"][0] for _, r in fake2.calls] == [f"{m:02d}" for m in range(4, 13)]
    assert not parts.exists()


def test_retries_then_a_clear_error(tmp_path, year_file, cfg):
    era5 = dict(cfg.era5, cds={"data_format": "netcdf", "retries": 2})
    waits = []
    fake = FakeCDS(year_file, fail=2)
    out = tmp_path / "2010.nc"
    fetch_cds(out, "pressure", "2010", cfg.required["pressure"], era5,
              client_factory=lambda: fake, sleep=waits.append)
    assert waits == [60, 120] and out.exists()
    bad = FakeCDS(year_file, garbage=True)
    with pytest.raises(InputError, match=r"01.nc: CDS download failed after 3 attempt\(s\).*not NetCDF"):
        fetch_cds(tmp_path / "x" / "2010.nc", "pressure", "2010", cfg.required["pressure"], era5,
                  client_factory=lambda: bad, sleep=lambda s: None)
    assert not (tmp_path / "x" / "2010.nc").exists()
    assert not list((tmp_path / "x" / ".2010.parts").iterdir())  # no half-written part


def test_cds_key_never_reaches_logs(tmp_path, year_file, monkeypatch, caplog):
    from pipeline_src.secrets import install_log_filter, redact

    monkeypatch.setenv("CDSAPI_KEY", SECRET)
    monkeypatch.setenv("CDSAPI_URL", "https://cds.climate.copernicus.eu/api")
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        install_log_filter()
        caplog.set_level(logging.INFO)
        logging.getLogger("cdsapi").info("request with key %s", SECRET)
        assert SECRET not in caplog.text and "***" in caplog.text
    finally:
        logging.getLogger().removeHandler(handler)
    assert redact({"cds": {"key": SECRET, "url": "u"}, "note": f"k={SECRET}"}) == \
        {"cds": {"key": "***", "url": "u"}, "note": "k=***"}


def _arco_store(path, raw_files, cfg):
    """A local Zarr store in the ARCO-ERA5 layout: long names, time/level, lat 90 -> -90."""
    p = load_nc(raw_files[("pressure", "2010")])
    s = load_nc(raw_files[("single", "2010")])
    st = load_nc(raw_files[("static", "static")])
    ds = xr.Dataset({
        "geopotential": p.z, "temperature": p.t, "u_component_of_wind": p.u,
        "specific_humidity": p.q, "2m_temperature": s.t2m, "10m_u_component_of_wind": s.u10,
        "land_sea_mask": st.lsm.isel(valid_time=0, drop=True),
        "geopotential_at_surface": st.z.isel(valid_time=0, drop=True),
    }).drop_vars(["number", "expver"], errors="ignore")
    ds = ds.rename({"valid_time": "time", "pressure_level": "level"}).sortby("level")
    ds.to_zarr(path, zarr_format=3, consolidated=False)


def test_zarr_store_to_cds_layout(tmp_path, raw_files):
    store = tmp_path / "arco.zarr"
    cfg = small_config(source="arco", arco={"store": str(store)})
    _arco_store(store, raw_files, cfg)
    for group, period in (("pressure", "2010"), ("single", "2010"), ("static", "static")):
        out = tmp_path / group / f"{period}.nc"
        metrics = acquire(cfg, group, period, out)
        got = load_raw(out, group, cfg.required[group], 10.0, [0], period)
        want = load_raw(raw_files[(group, period)], group, cfg.required[group], 10.0, [0], period)
        xr.testing.assert_allclose(got, want)
        assert metrics["fields"] > 0
    with pytest.raises(InputError, match="store lacks 365 time step"):
        acquire(cfg, "single", "2011", tmp_path / "single" / "2011.nc")
    bad = small_config(source="arco", arco={"store": str(tmp_path / "nothing.zarr")})
    with pytest.raises(InputError, match="nothing.zarr: cannot open Zarr store"):
        fetch_zarr(tmp_path / "y.nc", "single", "2010", bad.required["single"], bad.era5)
    shutil.rmtree(store)
