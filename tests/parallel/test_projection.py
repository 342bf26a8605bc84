"""7B- and 26B-class models are built and take a full training step as rank 0 of a world of
16 and 64, on a fake process group under FakeTensorMode: nothing is allocated. Depth 32 is
extended from depths 2 and 4 (report.projection.project); the extension itself is checked
against a full-depth step on a small model."""

import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from pipeline_src.report.projection import StepRecipe, fake_step, project
from pipeline_src.model.build import ModelSpec
dim, channels, heads, depth, world, tp, fsdp, full = map(int, sys.argv[1:9])
spec = ModelSpec(arch="dchag-L", task="forecast", channels=channels, image=(128, 256) if dim > 512 else (32, 64),
                 patch=4, dim=dim, depth=depth, heads=heads, agg_heads=heads, outputs=5, partitions=tp)
print(json.dumps((fake_step if full else project)(spec, world, tp, fsdp, StepRecipe())))
"""


def _project(*args) -> subprocess.Popen:
    # a process of its own: the fake process group is global state
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _results(runs: dict) -> dict:
    import json

    out = {}
    for name, proc in runs.items():
        stdout, err = proc.communicate(timeout=580)
        assert proc.returncode == 0, err[-3000:]
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.timeout(600)
def test_7b_and_26b_take_a_training_step_as_rank_0_of_a_large_world():
    results = _results({"7B": _project(4096, 512, 32, 32, 16, 16, 1, 0),
                        "26B": _project(8192, 1024, 64, 32, 64, 16, 4, 0)})
    b7, b26 = results["7B"], results["26B"]
    assert 6e9 < b7["parameters"] < 8e9 and 24e9 < b26["parameters"] < 28e9
    for r, world, shards in ((b7, 16, 16), (b26, 64, 64)):
        assert r["world"] == world and r["depth"] == 32 and r["extended_from"] == [2, 4]
        kinds = r["by_kind"]
        # rank 0 holds its 1/shards of the weights (bf16 compute copies aside): no rank ever held the model
        full_fp32 = 4 * r["parameters"]
        assert full_fp32 / shards * 0.8 < kinds["param"] < full_fp32 / shards * 1.6, (r["parameters"], kinds)
        assert kinds["opt"] == pytest.approx(2 * kinds["param"], rel=0.25)  # AdamW: exp_avg + exp_avg_sq
        assert kinds["act"] > 0 and r["peak_bytes"] < 64 * 2**30
        assert sum(kinds.values()) == pytest.approx(r["peak_bytes"], rel=0.01)
        assert r["flops"] > 3 * r["forward_flops"] > 0  # backward and recompute on top of the forward
    print({k: {"GiB": round(v["peak_bytes"] / 2**30, 2), "s": round(v["seconds"])} for k, v in results.items()})


@pytest.mark.timeout(300)
def test_depth_extension_matches_a_full_depth_step():
    results = _results({"extended": _project(64, 32, 4, 8, 2, 2, 1, 0), "full": _project(64, 32, 4, 8, 2, 2, 1, 1)})
    ext, full = results["extended"], results["full"]
    assert ext["parameters"] == full["parameters"] and ext["flops"] == full["flops"]
    assert ext["collectives"] == full["collectives"]
    # within 5% on this small model; the paper-scale report checks it at depth 32 (under 3%)
    assert ext["peak_bytes"] == pytest.approx(full["peak_bytes"], rel=0.05)
