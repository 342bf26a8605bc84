"""The training input pipeline: torch DataLoader workers read and prefetch this rank's micro-batches.

Item i of a run is the micro-batch of global micro-step i, drawn by the dataset's own
batch(seed, step, micro, ...): still a pure function of (seed, step, micro), so a resumed
run, any number of workers and any prefetch depth see the same batches in the same order.
"""

from __future__ import annotations

import multiprocessing
from typing import Callable

from torch.utils.data import DataLoader, Dataset

from . import Batch


class StepBatches(Dataset):
    """Micro-batches of steps [start, steps), grad_accum per step, from fetch(step, micro)."""

    def __init__(self, fetch: Callable[[int, int], Batch], start: int, steps: int, grad_accum: int):
        self.fetch, self.start, self.steps, self.grad_accum = fetch, start, steps, grad_accum

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.grad_accum

    def __getitem__(self, i: int) -> Batch:
        step, micro = divmod(i, self.grad_accum)
        return self.fetch(self.start + step, micro)


def _as_is(batch: Batch) -> Batch:
    return batch


def step_loader(fetch: Callable[[int, int], Batch], start: int, steps: int, grad_accum: int,
                workers: int = 1, prefetch: int = 4) -> DataLoader:
    """A DataLoader over this rank's micro-batches in order; workers=0 reads in the training process."""
    context = None
    if workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        context = "fork"  # workers share the opened stores and in-memory caches copy-on-write
    return DataLoader(StepBatches(fetch, start, steps, grad_accum), batch_size=None, shuffle=False,
                      num_workers=workers, prefetch_factor=prefetch if workers > 0 else None,
                      collate_fn=_as_is, multiprocessing_context=context)
