"""Evaluation run in spawned processes (module level: picklable)."""

from __future__ import annotations

import torch.distributed as dist


def evaluate_forecast(job, out_file: str, wb2_folder: str | None = None) -> None:
    """run_forecast_eval on this rank; rank 0 writes the per-init metrics to out_file (and with
    wb2_folder the forecasts and truth in WeatherBench2's layout there)."""
    from pathlib import Path

    from pipeline_src.evaluate.forecast import run_forecast_eval
    from pipeline_src.evaluate.stage import write_forecasts

    try:
        scores, _, data, forecasts = run_forecast_eval(job)
        if scores is not None:
            scores.to_dataset().to_netcdf(out_file)
            if wb2_folder is not None:
                write_forecasts(forecasts, data, Path(wb2_folder))
        data.close()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
