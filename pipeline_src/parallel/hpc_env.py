"""The environment ROCm ranks on Frontier need, in one place, set before the process group starts.

Only defaults: a variable the user (or the site's modules) already set is left alone. Applied on
ROCm builds of torch (torch.version.hip) only, so CPU and CUDA runs are untouched. The values
follow OLCF's guidance for PyTorch with RCCL and the aws-ofi-rccl libfabric plugin on the
Slingshot network; they have not been measured by this project on Frontier itself.
"""

from __future__ import annotations

import os
from typing import MutableMapping

ROCM_NETWORK = {
    "NCCL_SOCKET_IFNAME": "hsn0",  # RCCL's bootstrap on the Slingshot interfaces
    "NCCL_NET_GDR_LEVEL": "3",  # GPU-direct RDMA between GCDs and NICs
    "NCCL_CROSS_NIC": "1",
    "FI_CXI_ATS": "0",  # libfabric CXI provider settings for aws-ofi-rccl
    "FI_MR_CACHE_MONITOR": "userfaultfd",
    "FI_CXI_DEFAULT_CQ_SIZE": "131072",
}


def rocm_defaults(rank: int, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The variables this rank gets (those not already set): network settings, and MIOpen's
    kernel databases on node-local /tmp, one per rank (a shared home directory makes MIOpen's
    SQLite databases lock up across ranks)."""
    env = os.environ if environ is None else environ
    tag = f"{env.get('USER', 'user')}-{env.get('SLURM_JOB_ID', 'local')}-{rank}"
    wanted = {**ROCM_NETWORK, "MIOPEN_USER_DB_PATH": f"/tmp/miopen-{tag}",
              "MIOPEN_CUSTOM_CACHE_DIR": f"/tmp/miopen-{tag}"}
    return {k: v for k, v in wanted.items() if k not in env}


def apply_rocm_defaults(rank: int) -> dict[str, str]:
    """Set rocm_defaults in this process when torch is a ROCm build; return what was set."""
    import torch

    if getattr(torch.version, "hip", None) is None:
        return {}
    added = rocm_defaults(rank)
    os.environ.update(added)
    if "MIOPEN_USER_DB_PATH" in added:
        os.makedirs(added["MIOPEN_USER_DB_PATH"], exist_ok=True)
    return added
