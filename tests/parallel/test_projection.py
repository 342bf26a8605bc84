"""7B- and 26B-class models are built and take a full training step as rank 0 of a world of
16 and 64, on a fake process group under FakeTensorMode: nothing is allocated."""

import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from pipeline_src.bench.projection import StepRecipe, fake_step
from pipeline_src.model.build import ModelSpec
dim, channels, heads, world, tp, fsdp = map(int, sys.argv[1:7])
spec = ModelSpec(arch="dchag-L", task="forecast", channels=channels, image=(128, 256), patch=4, dim=dim,
                 depth=32, heads=heads, agg_heads=heads, outputs=5, partitions=tp)
print(json.dumps(fake_step(spec, world, tp, fsdp, StepRecipe())))
"""


def _project(*args) -> subprocess.Popen:
    # a process of its own: the fake process group is global state
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(900)
def test_7b_and_26b_take_a_training_step_as_rank_0_of_a_large_world():
    import json

    runs = {"7B": _project(4096, 512, 32, 16, 16, 1), "26B": _project(8192, 1024, 64, 64, 16, 4)}
    results = {}
    for name, proc in runs.items():  # both run at once: one core each
        out, err = proc.communicate(timeout=880)
        assert proc.returncode == 0, err[-3000:]
        results[name] = json.loads(out.strip().splitlines()[-1])
    b7, b26 = results["7B"], results["26B"]
    assert 6e9 < b7["parameters"] < 8e9 and 24e9 < b26["parameters"] < 28e9
    for r, world, shards in ((b7, 16, 16), (b26, 64, 64)):
        assert r["world"] == world
        kinds = r["by_kind"]
        # rank 0 holds its 1/shards of the weights (bf16 compute copies aside): no rank ever held the model
        full_fp32 = 4 * r["parameters"]
        assert full_fp32 / shards * 0.8 < kinds["param"] < full_fp32 / shards * 1.6, (r["parameters"], kinds)
        assert kinds["opt"] == pytest.approx(2 * kinds["param"], rel=0.25)  # AdamW: exp_avg + exp_avg_sq
        assert kinds["act"] > 0 and r["peak_bytes"] < 64 * 2**30
    print({k: {"GiB": round(v["peak_bytes"] / 2**30, 2), "s": round(v["seconds"])} for k, v in results.items()})
