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


def test_mae_benchmark_states_the_gap_and_its_spread_over_seeds():
    from pipeline_src.bench import mae

    def row(variant, arch, seed, loss):
        return {"variant": variant, "arch": arch, "seed": seed, "heldout": loss, "ref_zero": 1.0,
                "ref_visible_mean": 0.8, "ref_local_mean": 0.5, "ratio": loss / 0.8, "steps": 60, "seconds": 1.0}

    rows = [row("mae-tp", "tp-baseline", 0, 0.50), row("mae-L", "dchag-L", 0, 0.52),
            row("mae-tp", "tp-baseline", 1, 0.40), row("mae-L", "dchag-L", 1, 0.46)]
    text = mae.report(rows)
    assert "mae-L minus TP-only over 2 seed(s): mean +0.0400, standard deviation 0.0283" in text
    assert "range +0.0200 to +0.0600 (+9.5% of TP-only's loss)" in text
    assert "0.650" in text  # 0.52 / 0.8, the run's ratio to the better reference
    assert "1.040" in text  # 0.52 / 0.5, the run's ratio to the local mean
