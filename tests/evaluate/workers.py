"""Evaluation run in spawned processes (module level: picklable)."""

from __future__ import annotations

import torch.distributed as dist


def evaluate_forecast(job, out_file: str) -> None:
    """run_forecast_eval on this rank; rank 0 writes the per-init metrics to out_file."""
    from pipeline_src.evaluate.forecast import run_forecast_eval

    try:
        scores, _, data = run_forecast_eval(job)
        if scores is not None:
            scores.to_dataset().to_netcdf(out_file)
        data.close()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
