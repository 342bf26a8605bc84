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


def test_rocm_environment_defaults_leave_user_settings_alone():
    from pipeline_src.parallel.hpc_env import ROCM_NETWORK, apply_rocm_defaults, rocm_defaults

    env = {"USER": "ana", "SLURM_JOB_ID": "77", "NCCL_SOCKET_IFNAME": "hsn1"}
    added = rocm_defaults(3, env)
    assert "NCCL_SOCKET_IFNAME" not in added  # the user's choice stays
    assert added["MIOPEN_USER_DB_PATH"] == added["MIOPEN_CUSTOM_CACHE_DIR"] == "/tmp/miopen-ana-77-3"
    assert set(ROCM_NETWORK) - set(added) == {"NCCL_SOCKET_IFNAME"}
    assert apply_rocm_defaults(0) == {}  # this torch is a CPU build: nothing is set


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
