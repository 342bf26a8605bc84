"""The front-end benchmark CLI runs on real processes and prints its table (tiny sizes)."""

import json

import pytest

from pipeline_src.bench import frontend


@pytest.mark.timeout(240)
def test_frontend_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    frontend.main(["--channels", "8", "--dim", "16", "--heads", "2", "--image", "8", "16", "--archs", "tp-baseline",
                   "dchag-C", "--tree", "2", "--steps", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {(r["variant"], r["channels"]): r for r in report["results"]}
    assert set(rows) == {("tp-baseline", 8), ("dchag-C tree[2]", 8)}
    for r in rows.values():
        assert len(r["ranks"]) == 2 and all(x["peak_bytes"] > 0 and x["samples_per_s"] > 0 for x in r["ranks"])
    assert report["calibration"]["matmul_tflops"] > 0 and report["calibration"]["allreduce_gb_s"] > 0
    printed = capsys.readouterr().out
    assert "| 8 | dchag-C tree[2] |" in printed and "vs TP" in printed and "all-reduce" in printed
