"""Slurm helpers without a cluster: the pre-flight fit check, the job end time, the world check."""

import pytest

from pipeline_src.io import ConfigError
from pipeline_src.parallel.mesh import check_world, launch_env
from pipeline_src.parallel.walltime import job_end_time, parse_end_time
from pipeline_src.slurm import Request, misfits, parse_sinfo

SINFO = "cpu*|2|23081\ncpu*|2|23081\ngpu|8|512000\nbig|64|1000000+\n"


def test_sinfo_and_misfits():
    nodes, default = parse_sinfo(SINFO)
    assert default == "cpu" and nodes["cpu"] == [(2, 23081), (2, 23081)] and nodes["big"] == [(64, 1000000)]
    ok = [Request("train", None, cpus_per_task=1, tasks=2, mem_mb=3000),
          Request("era5_assemble", "big", cpus_per_task=56, mem_mb=400000),
          Request("evaluate", "gpu", cpus_per_task=4, tasks=2, mem_mb=0)]
    assert misfits(ok, nodes, default) == []
    bad = [Request("era5_regrid", None, cpus_per_task=4, mem_mb=16000),
           Request("era5_regrid", None, cpus_per_task=4, mem_mb=16000),  # reported once
           Request("train", "cpu", cpus_per_task=1, tasks=6, nodes=3, mem_mb=1000),
           Request("era5_assemble", "cpu", cpus_per_task=1, mem_mb=64000),
           Request("x", "nope")]
    lines = misfits(bad, nodes, default)
    assert len(lines) == 4
    assert lines[0].startswith("rule era5_regrid asks 1 node(s) with 4 CPUs (4 per task x 1 tasks) and "
                               "16000 MB each; partition cpu has 0 such node(s) (largest: 2 CPUs, 23081 MB)")
    assert "asks 3 node(s)" in lines[1] and "has 2 such node(s)" in lines[1]
    assert "64000 MB" in lines[2]
    assert lines[3] == "rule x: partition 'nope' does not exist (sinfo lists big, cpu, gpu)"


FRONTIER_BINS = "batch: 91:120 183:360 9408:720"  # the Frontier profile's hpc_time_bins


def test_time_limits_of_partitions_and_of_the_queue_by_job_size():
    from pipeline_src.slurm import bin_limit, parse_sinfo_limits, slurm_minutes

    assert [slurm_minutes(t) for t in ("120", "2:00:00", "1-12:00:00", "1-12", "30:00", "1:30", "infinite")] == [
        120, 120, 2160, 2160, 30, 1, None]  # MM:SS; seconds dropped, so 2 minutes are past 1:30
    nodes, default, limits = parse_sinfo_limits("batch*|56|512000|1-00:00:00\n" * 200 +
                                                "debug|56|512000|2:00:00\nlong|8|1000|UNLIMITED\n"
                                                "odd|8|1000|NONE\n")
    assert default == "batch" and limits == {"batch": 1440, "debug": 120, "long": None, "odd": None}
    # Frontier's user guide: 1-91 nodes 2 h, 92-183 nodes 6 h, 184 and more 12 h
    assert [bin_limit(FRONTIER_BINS, n, "batch") for n in (1, 91, 92, 183, 184, 9408)] == [
        (1, 91, 120), (1, 91, 120), (92, 183, 360), (92, 183, 360), (184, 9408, 720), (184, 9408, 720)]
    assert bin_limit(FRONTIER_BINS, 9409, "batch") == (9409, 9409, None)  # larger than any bin
    assert bin_limit(FRONTIER_BINS, 4, "extended") is None  # the bins are batch's
    assert bin_limit("91:120", 4, "any") == (1, 91, 120)  # bins without a partition apply to all
    ok = [Request("era5_assemble", None, cpus_per_task=56, mem_mb=400000, runtime=120, time_bins=FRONTIER_BINS),
          Request("train", None, cpus_per_task=7, tasks=1024, nodes=128, runtime=360, time_bins=FRONTIER_BINS),
          Request("train", "debug", cpus_per_task=7, tasks=8, runtime=120),
          Request("train", "debug", cpus_per_task=7, tasks=8, runtime=120, time_bins=FRONTIER_BINS)]
    assert misfits(ok, nodes, default, limits) == []
    bad = [Request("era5_assemble", None, cpus_per_task=56, mem_mb=400000, runtime=240, time_bins=FRONTIER_BINS),
           Request("train", None, cpus_per_task=7, tasks=1024, nodes=128, runtime=720, time_bins=FRONTIER_BINS),
           Request("train", "debug", cpus_per_task=7, tasks=8, runtime=121)]
    assert misfits(bad, nodes, default, limits) == [
        "rule era5_assemble asks 240 min on 1 node(s); the queue allows 120 min to jobs of 1-91 nodes "
        "(hpc_time_bins: batch: 91:120 183:360 9408:720)",
        "rule train asks 720 min on 128 node(s); the queue allows 360 min to jobs of 92-183 nodes "
        "(hpc_time_bins: batch: 91:120 183:360 9408:720)",
        "rule train asks 121 min; partition debug allows 120 min (sinfo)"]
    assert bin_limit(FRONTIER_BINS, 10000, "batch")[2] is None


def test_job_end_time():
    assert parse_end_time("2026-11-26T12:30:00") == pytest.approx(
        __import__("datetime").datetime(2026, 11, 26, 12, 30).timestamp())
    assert parse_end_time("Unknown") is None and parse_end_time("") is None
    assert job_end_time({}) is None
    assert job_end_time({"SLURM_JOB_END_TIME": "1790000000", "SLURM_JOB_ID": "1"}) == 1790000000.0


def test_world_check_names_the_launcher_variable():
    env = launch_env({})
    with pytest.raises(ConfigError, match="train.nproc: configured for 2 ranks, launched with 1: no launcher "
                                          "variables: neither torchrun's RANK/WORLD_SIZE nor srun's"):
        check_world(env, 2, "train.nproc", {})
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1"}
    with pytest.raises(ConfigError, match=r"srun started 1 task\(s\) \(SLURM_NTASKS=1, SLURM_STEP_NUM_TASKS=unset\): "
                                          r"give srun -n 8"):
        check_world(launch_env(slurm), 8, "train.nproc", slurm)
    torchrun = {"RANK": "0", "WORLD_SIZE": "4"}
    with pytest.raises(ConfigError, match="torchrun set WORLD_SIZE=4: use --nproc-per-node 2"):
        check_world(launch_env(torchrun), 2, "train.nproc", torchrun)
    check_world(launch_env(torchrun), 4, "train.nproc", torchrun)
    check_world(env, None, "train.nproc", {})


def test_rocm_environment_follows_olcf_and_leaves_user_settings_alone():
    from pipeline_src.parallel.hpc_env import apply_rocm_defaults, rocm_defaults

    env = {"USER": "ana", "SLURM_JOB_ID": "77", "NCCL_SOCKET_IFNAME": "hsn1"}
    added = rocm_defaults(3, env)
    assert "NCCL_SOCKET_IFNAME" not in added  # the user's choice stays
    assert added["MIOPEN_USER_DB_PATH"] == added["MIOPEN_CUSTOM_CACHE_DIR"] == "/tmp/miopen-ana-77-3"
    # OLCF's "PyTorch on Frontier": the variables HPE and AMD recommend with the RCCL plugin
    olcf = {"NCCL_CROSS_NIC": "1", "NCCL_NET_GDR_LEVEL": "PHB", "HSA_FORCE_FINE_GRAIN_PCIE": "1",
            "FI_MR_CACHE_MONITOR": "kdreg2", "FI_CXI_DISABLE_HOST_REGISTER": "1", "FI_CXI_DEFAULT_CQ_SIZE": "131072",
            "FI_CXI_DEFAULT_TX_SIZE": "2048", "FI_CXI_RX_MATCH_MODE": "hybrid"}
    assert {k: added[k] for k in olcf} == olcf
    assert rocm_defaults(3, {})["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3"
    # the alternative rendezvous only where the allocation disabled rendezvous gets
    assert not any(k.startswith("FI_CXI_RDZV") for k in added)
    alt = rocm_defaults(3, {**env, "DCHAG_RDZV_GET_DISABLED": "1"})
    assert {k: alt[k] for k in alt if k.startswith("FI_CXI_RDZV")} == {
        "FI_CXI_RDZV_PROTO": "alt_read", "FI_CXI_RDZV_EAGER_SIZE": "0", "FI_CXI_RDZV_THRESHOLD": "0",
        "FI_CXI_RDZV_GET_MIN": "0"}
    # rank 0 keeps RCCL's INIT/NET log in a node-local file, unless the user chose NCCL_DEBUG
    zero = rocm_defaults(0, env)
    assert (zero["NCCL_DEBUG"], zero["NCCL_DEBUG_SUBSYS"], zero["NCCL_DEBUG_FILE"]) == (
        "INFO", "INIT,NET", "/tmp/rccl-ana-77-0.log")
    assert "NCCL_DEBUG" not in added and "NCCL_DEBUG_FILE" not in rocm_defaults(0, {**env, "NCCL_DEBUG": "WARN"})
    assert apply_rocm_defaults(0) == {}  # this torch is a CPU build: nothing is set


# RCCL/NCCL INFO lines in the forms they print (aws-ofi-nccl's own issue tracker shows the
# plugin's "NET/OFI Initializing ..." and "Using Libfabric version" lines).
OFI_LOG = """frontier00001:1234:1300 [0] NCCL INFO NET/OFI Initializing aws-ofi-nccl 1.14.2
frontier00001:1234:1300 [0] NCCL INFO NET/OFI Using Libfabric version 2.1
frontier00001:1234:1300 [0] NCCL INFO NET/OFI Selected Provider is cxi (found 4 nics)
frontier00001:1234:1300 [0] NCCL INFO Using network AWS Libfabric
"""
SOCKET_LOG = """frontier00001:1234:1300 [0] NCCL INFO NET/Plugin: Could not find: librccl-net.so.
frontier00001:1234:1300 [0] NCCL INFO NET/Socket : Using [0]hsn0:10.128.0.1<0> [1]hsn1:10.128.0.2<0>
frontier00001:1234:1300 [0] NCCL INFO Using network Socket
"""


def test_the_network_rccl_chose_is_read_from_its_log_and_sockets_across_nodes_warn():
    from pipeline_src.parallel.hpc_env import socket_warning, transport_from_log

    assert transport_from_log(OFI_LOG) == "OFI"
    assert transport_from_log(SOCKET_LOG) == "Socket"
    assert transport_from_log(SOCKET_LOG.replace("NCCL INFO Using network Socket\n", "")) == "Socket"
    assert transport_from_log("frontier00001:1:1 [0] NCCL INFO Using network IB\n") == "IB"
    assert transport_from_log("") is None
    assert "TCP sockets between 2 nodes" in socket_warning({"comm.transport": "Socket", "comm.nodes": "2"})
    assert socket_warning({"comm.transport": "Socket", "comm.nodes": "1"}) is None  # one node: no network
    assert socket_warning({"comm.transport": "OFI", "comm.nodes": "128"}) is None


def test_the_communication_record_reads_rank_zeros_rccl_log(tmp_path, monkeypatch):
    import torch

    from pipeline_src.parallel import hpc_env

    records = []

    class Run:
        def log_params(self, p):
            records.append(("params", p))

        def set_tags(self, t):
            records.append(("tags", t))

    rec = hpc_env.report_communication("gloo", Run())  # a CPU job: versions, no RCCL
    assert rec == {"comm.backend": "gloo", "comm.torch": torch.__version__, "comm.nodes": "1"}
    assert records == [("params", rec)]
    # as on a ROCm GPU job of two nodes whose RCCL fell back to sockets
    log_file = tmp_path / "rccl.log"
    log_file.write_text(SOCKET_LOG)
    monkeypatch.setattr(torch.version, "hip", "7.2.26015")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 27, 7))
    env = {"NCCL_DEBUG_FILE": str(log_file), "SLURM_STEP_NUM_NODES": "2", "LOADEDMODULES": "rocm/7.2.0"}
    rec = hpc_env.communication_record("cuda:nccl,cpu:gloo", env)
    assert {k: rec[k] for k in ("comm.rocm", "comm.rccl", "comm.transport", "comm.nodes", "comm.net_plugin_module")} == {
        "comm.rocm": "7.2.26015", "comm.rccl": "2.27.7", "comm.transport": "Socket", "comm.nodes": "2",
        "comm.net_plugin_module": "no"}
    assert "rccl-net-plugin" in hpc_env.socket_warning(rec)
    monkeypatch.setattr(hpc_env.os, "environ", env)
    records.clear()
    hpc_env.report_communication("cuda:nccl,cpu:gloo", Run())
    assert records[1][0] == "tags" and "TCP sockets between 2 nodes" in records[1][1]["warning.network"]


def test_placement_fills_whole_nodes_and_keeps_tp_groups_inside_them():
    from pipeline_src.placement import place

    assert place(2, None, 2, "k").srun_options() == "-N 1 -n 2"  # no ranks_per_node: one node
    assert place(4, 8, 4, "k").srun_options() == "-N 1 -n 4"  # a part of one node
    tp16 = place(16, 8, 16, "k")
    assert (tp16.nodes, tp16.tasks_per_node) == (2, 8)
    assert tp16.srun_options() == "-N 2 -n 16 --ntasks-per-node 8"
    assert tp16.resources() == {"nodes": 2, "tasks_per_node": 8}
    assert place(32, 8, 2, "k").resources() == {"nodes": 4, "tasks_per_node": 8}
    assert place(1024, 8, 2, "k").srun_options() == "-N 128 -n 1024 --ntasks-per-node 8"  # the authors' 7B layout
    assert place(2, 1, 2, "k").resources() == {"nodes": 2, "tasks": 2}  # the plugin refuses tasks_per_node 1
    with pytest.raises(ConfigError, match="12 ranks do not fill whole nodes of 8"):
        place(12, 8, 4, "train.nproc 12")
    with pytest.raises(ConfigError, match="tp 3 does not tile nodes of 8 ranks.*straddle 2 nodes where 1"):
        place(24, 8, 3, "k")
    with pytest.raises(ConfigError, match="tp 12 does not tile nodes of 8.*straddle 3 nodes where 2"):
        place(24, 8, 12, "k")


def test_config_refuses_layouts_that_do_not_place():
    from pipeline_src.config import job_placement, validate_dict

    base = {"era5": {"source": "synthetic", "years": {"train": [2010], "val": [2011], "test": [2012]},
                     "channels": "paper"},
            "model": {"dim": 256, "heads": 16, "agg_heads": 16}}
    cfg = validate_dict({**base, "train": {"nproc": 16, "mesh": {"tp": 16}}, "hpc": {"ranks_per_node": 8}})
    assert job_placement(cfg, "train").nodes == job_placement(cfg, "evaluate").nodes == 2
    cfg = validate_dict({**base, "train": {"nproc": 16, "mesh": {"tp": 2}},
                         "evaluate": {"nproc": 4, "mesh": {"tp": 4}}, "hpc": {"ranks_per_node": "8"}})
    assert cfg["hpc"]["ranks_per_node"] == 8  # --config passes strings
    assert job_placement(cfg, "evaluate").nodes == 1
    with pytest.raises(ConfigError, match=r"train.nproc 12 at tp 4: 12 ranks do not fill whole nodes of 8"):
        validate_dict({**base, "train": {"nproc": 12, "mesh": {"tp": 4}}, "hpc": {"ranks_per_node": 8}})
    with pytest.raises(ConfigError, match=r"evaluate.nproc 24 at tp 4: tp 4 does not tile nodes of 6"):
        validate_dict({**base, "train": {"nproc": 12, "mesh": {"tp": 2}},
                       "evaluate": {"nproc": 24, "mesh": {"tp": 4}}, "hpc": {"ranks_per_node": 6}})
