"""The front-end benchmark runs on real processes and reports every variant (tiny sizes)."""

import json

import pytest

from pipeline_src.bench import frontend


@pytest.mark.timeout(240)
def test_frontend_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    frontend.main(["--channels", "8", "--dim", "16", "--heads", "2", "--image", "8", "16",
                   "--steps", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {(r["arch"], r["channels"]): r for r in report["results"]}
    assert set(rows) == {(a, 8) for a in frontend.ARCHS}
    for r in rows.values():
        assert len(r["ranks"]) == 2 and all(x["peak_bytes"] > 0 and x["samples_per_s"] > 0 for x in r["ranks"])
    # D-CHAG-L tokenizes half the channels per rank: its activation peak must be lower
    assert rows[("dchag-L", 8)]["ranks"][0]["peak_bytes"] < rows[("tp-baseline", 8)]["ranks"][0]["peak_bytes"]
    printed = capsys.readouterr().out
    assert "dchag-C" in printed and "vs TP" in printed
