"""D-CHAG and TP-baseline on real gloo processes equal the single-process model (outputs and grads)."""

import pytest

from pipeline_src.parallel.spawn import run_local

from . import workers

MESHES = [  # (tp, fsdp, dp, sequence_parallel, activation_checkpointing); SP at TP 2, alone and with FSDP
    (1, 1, 1, False, "none"),
    (2, 1, 1, False, "none"),
    (4, 1, 1, False, "none"),
    (2, 2, 1, False, "none"),
    (2, 1, 2, False, "blocks"),
    (2, 1, 1, True, "full"),
    (2, 2, 1, True, "full"),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tp,fsdp,dp,sp,ac", MESHES, ids=[f"tp{t}-fsdp{f}-dp{d}" + ("-sp" if sp else "") + f"-ac-{ac}"
                                                          for t, f, d, sp, ac in MESHES])
def test_distributed_equals_single_process(tp, fsdp, dp, sp, ac):
    run_local(workers.exactness, tp * fsdp * dp, tp, fsdp, dp, sp, ac)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tp", [2, 4])
def test_the_partition_gathers_backward_is_each_ranks_own_slice(tp):
    """A backward that takes another rank's slice (rank 0's on every rank, say) fails on rank 1."""
    run_local(workers.gather_backward, tp)
