"""D-CHAG and TP-baseline on real gloo processes equal the single-process model (outputs and grads)."""

import pytest

from pipeline_src.parallel.spawn import run_local

from . import workers

MESHES = [  # (tp, fsdp, dp)
    (1, 1, 1),
    (2, 1, 1),
    (4, 1, 1),
    (2, 2, 1),
    (2, 1, 2),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tp,fsdp,dp", MESHES, ids=[f"tp{t}-fsdp{f}-dp{d}" for t, f, d in MESHES])
def test_distributed_equals_single_process(tp, fsdp, dp):
    run_local(workers.exactness, tp * fsdp * dp, tp, fsdp, dp)
