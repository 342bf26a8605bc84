"""Run a function on N local processes with torch.multiprocessing (tests and CPU benchmarks)."""

from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if "OMP_NUM_THREADS" not in os.environ:  # one share of the cores per rank, as torchrun does
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    fn(*args)


def run_local(fn: Callable, world: int, *args) -> None:
    """Call fn(*args) on `world` spawned processes wired like torchrun (RANK, WORLD_SIZE, ...).

    fn must be importable (module level). An exception in any process is raised here.
    """
    mp.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world,
                       join=True, start_method="spawn")
