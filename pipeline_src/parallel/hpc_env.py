"""The environment ROCm ranks on Frontier need, set before the process group starts, and a record
of what RCCL chose once it has.

Only defaults: a variable the user or the site's modules already set (the `rccl-net-plugin`
module sets most of these itself) is left alone. Applied on ROCm builds of torch
(torch.version.hip) only, so CPU and CUDA runs are untouched. Values and reasons are OLCF's
("PyTorch on Frontier", sections "RCCL Network Plugin", "Alternative Rendezvous Protocol" and
"Manual RCCL Network Plugin Configuration": the variables HPE and AMD recommend on Frontier for
correctness and performance at scale); they have not been measured by this project on Frontier.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

# RCCL over the Slingshot NICs (PyTorch on Frontier, "Master Address and Sockets" and the
# plugin's recommended settings).
RCCL_NETWORK = {
    "NCCL_SOCKET_IFNAME": "hsn0,hsn1,hsn2,hsn3",  # bootstrap on all four Slingshot NICs
    "NCCL_CROSS_NIC": "1",
    "NCCL_NET_GDR_LEVEL": "PHB",  # GPU-direct RDMA between a GCD and the NIC under its PCIe bridge
}
# libfabric's CXI provider under the aws-ofi-rccl plugin ("strongly recommended ... for both
# correctness and best performance at scale"), and HSA's fine-grained PCIe memory for it.
LIBFABRIC_CXI = {
    "HSA_FORCE_FINE_GRAIN_PCIE": "1",
    "FI_MR_CACHE_MONITOR": "kdreg2",  # Frontier's default monitor; memhooks can deadlock the plugin
    "FI_CXI_DISABLE_HOST_REGISTER": "1",
    "FI_CXI_DEFAULT_CQ_SIZE": "131072",
    "FI_CXI_DEFAULT_TX_SIZE": "2048",
    "FI_CXI_RX_MATCH_MODE": "hybrid",
}
# The alternative rendezvous protocol: valid only in an allocation made with
# --network=disable_rdzv_get ("Alternative Rendezvous Protocol"); the rank launcher says so
# through DCHAG_RDZV_GET_DISABLED when its srun carries that flag.
CXI_ALT_RENDEZVOUS = {
    "FI_CXI_RDZV_PROTO": "alt_read",
    "FI_CXI_RDZV_EAGER_SIZE": "0",
    "FI_CXI_RDZV_THRESHOLD": "0",
    "FI_CXI_RDZV_GET_MIN": "0",
}
RDZV_FLAG = "DCHAG_RDZV_GET_DISABLED"


def rocm_defaults(rank: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables this rank gets (those not already set): network settings, MIOpen's kernel
    databases on node-local /tmp, one per rank (a shared home directory makes MIOpen's SQLite
    databases lock up across ranks), and on rank 0 RCCL's INIT/NET log in a node-local file, from
    which communication_record() reads the network RCCL chose."""
    env = os.environ if environ is None else environ
    tag = f"{env.get('USER', 'user')}-{env.get('SLURM_JOB_ID', 'local')}-{rank}"
    wanted = {**RCCL_NETWORK, **LIBFABRIC_CXI, "MIOPEN_USER_DB_PATH": f"/tmp/miopen-{tag}",
              "MIOPEN_CUSTOM_CACHE_DIR": f"/tmp/miopen-{tag}"}
    if env.get(RDZV_FLAG) == "1":
        wanted.update(CXI_ALT_RENDEZVOUS)
    if rank == 0 and "NCCL_DEBUG" not in env:
        wanted.update({"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET",
                       "NCCL_DEBUG_FILE": f"/tmp/rccl-{tag}.log"})
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


def transport_from_log(text: str) -> str | None:
    """The inter-node network RCCL/NCCL chose, from its INFO lines: 'OFI' (the libfabric plugin:
    Slingshot), 'Socket' (TCP), another network's name (IB...), or None when the log names none.

    NCCL and RCCL print "Using network <name>" once a communicator has picked its network, and
    every line of the plugin starts "NET/OFI", of the built-in TCP transport "NET/Socket".
    """
    named = re.findall(r"NCCL INFO Using network (.+?)\s*$", text, flags=re.MULTILINE)
    if named:
        name = named[-1]
        return "OFI" if re.search(r"libfabric|ofi", name, flags=re.IGNORECASE) else name
    if "NET/OFI" in text:
        return "OFI"
    if "NET/Socket" in text:
        return "Socket"
    return None


def communication_record(backend: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What this job's collectives run on, for the log and MLflow: torch, ROCm/CUDA and RCCL/NCCL
    versions, the backend, the nodes, and the network RCCL chose (read from rank 0's debug file)."""
    import torch

    env = os.environ if environ is None else environ
    record = {"comm.backend": backend, "comm.torch": torch.__version__,
              "comm.nodes": env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or "1"}
    if getattr(torch.version, "hip", None):
        record["comm.rocm"] = torch.version.hip
    elif getattr(torch.version, "cuda", None):
        record["comm.cuda"] = torch.version.cuda
    if "nccl" in backend and torch.cuda.is_available():
        record["comm.rccl" if torch.version.hip else "comm.nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        path = env.get("NCCL_DEBUG_FILE", "")
        path = path.replace("%h", os.uname().nodename).replace("%p", str(os.getpid()))
        text = Path(path).read_text(errors="replace") if path and Path(path).is_file() else ""
        record["comm.transport"] = transport_from_log(text) or "unknown (set NCCL_DEBUG=INFO to see it)"
        record["comm.net_plugin_module"] = "loaded" if "rccl-net-plugin" in env.get("LOADEDMODULES", "") else "no"
    return record


def socket_warning(record: Mapping[str, str]) -> str | None:
    """A loud warning when a multi-node job's collectives go over TCP sockets, else None."""
    if record.get("comm.transport") != "Socket" or int(record.get("comm.nodes", "1")) <= 1:
        return None
    return (f"RCCL/NCCL is using TCP sockets between {record['comm.nodes']} nodes, not the Slingshot "
            f"network: collectives will crawl (OLCF: sockets 'do not scale'). Load the rccl-net-plugin "
            f"module after rocm (hpc_modules in the Frontier profile) and submit with "
            f"--network=disable_rdzv_get; `module show rccl-net-plugin` lists what it sets.")


def report_communication(backend: str | None = None, run=None) -> dict[str, str]:
    """Log (rank 0) and record in the MLflow run what the collectives run on; warn on sockets.
    backend None: the default process group's ({} without one)."""
    if backend is None:
        import torch.distributed as dist

        if not dist.is_initialized():
            return {}
        backend = dist.get_backend()
    record = communication_record(backend)
    log.info("collectives: %s", ", ".join(f"{k[5:]} {v}" for k, v in record.items()))
    warning = socket_warning(record)
    if warning:
        banner = "!" * 100
        log.warning("%s\n%s\n%s", banner, warning, banner)
    if run is not None:
        run.log_params(record)
        if warning:
            run.set_tags({"warning.network": warning})
    return record
