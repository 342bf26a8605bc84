"""Benchmark: what the training input pipeline delivers (samples/s per rank) vs what training consumes.

Reads through the same DataLoader, workers and batch function as training: a tp-baseline
rank reads every input channel, a D-CHAG rank only its partitions' channels. Consumption
comes from a training summary (samples/s of the whole run, divided over its data-parallel
shards: every TP rank of a shard reads the same samples). Bytes read per rank are counted
below the Zarr reader (compressed bytes and shard indexes, fields and climatology) over the
same micro-batches with the in-memory cache off, so every sample is read from disk.
--synthetic-channels writes an assembled-format store with that many channels first (the
paper-like setup: 80), in the assemble stage's chunking.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from collections import Counter

from ..datasets.counting import CountingStore
from ..datasets.era5 import ERA5Forecast
from ..datasets.loader import step_loader
from ..era5.assemble import climatology_encoding, fields_encoding
from ..model.aggregation import partition_bounds


def write_store(folder: Path, channels: int, days: int, grid: tuple[int, int] = (32, 64)) -> Path:
    """An assembled-format ERA5 folder (train.zarr, climatology.zarr, normalization.json) of random fields."""
    rng = np.random.default_rng(0)
    names = [f"c{i:03d}" for i in range(channels)]
    lat = np.linspace(-87.1875, 87.1875, grid[0])
    lon = np.arange(grid[1]) * 360.0 / grid[1]
    times = pd.date_range("2010-01-01", periods=days, freq="D")
    coords = {"channel": names, "latitude": lat, "longitude": lon}
    fields = rng.standard_normal((days, channels, *grid), dtype=np.float32)
    xr.Dataset({"fields": (("time", "channel", "latitude", "longitude"), fields)},
               coords={"time": times, **coords}).to_zarr(folder / "train.zarr", mode="w", zarr_format=3,
                                                         consolidated=False,
                                                         encoding={"fields": fields_encoding(64, grid)})
    clim = np.zeros((366, 1, channels, *grid), dtype=np.float32)
    xr.Dataset({"climatology": (("dayofyear", "hour", "channel", "latitude", "longitude"), clim)},
               coords={"dayofyear": np.arange(1, 367), "hour": [0], **coords}).to_zarr(
        folder / "climatology.zarr", mode="w", zarr_format=3, consolidated=False,
        encoding={"climatology": climatology_encoding(1, grid)})
    ones = [1.0] * channels
    (folder / "normalization.json").write_text(json.dumps(
        {"channels": names, "mean": [0.0] * channels, "std": ones, "anomaly_std": ones, "static_channels": []}))
    return folder


def loader_rate(data: ERA5Forecast, channels: slice | None, micro_batch: int, steps: int,
                workers: int, prefetch: int) -> float:
    """Samples/s one rank's loader delivers over `steps` micro-batches (after the first)."""
    def fetch(step, micro):
        return data.batch(0, step, micro, micro_batch, slice(0, micro_batch), channels)

    batches = iter(step_loader(fetch, 0, steps + 1, 1, workers, prefetch))
    next(batches)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in batches:
        pass
    return steps * micro_batch / (time.perf_counter() - start)


def bytes_per_sample(assembled: str, targets: list[str], channels: slice | None, micro_batch: int,
                     steps: int) -> float:
    """Bytes one rank reads from the stores per sample, cache off (every sample from disk)."""
    counts = Counter()
    data = ERA5Forecast(assembled, "train", targets, [1.0], cache_bytes=0,
                        wrap=lambda path: CountingStore(path, counts))
    data.use_inputs(channels)
    counts.clear()  # opening read the coordinates and metadata
    for step in range(steps):
        data.batch(0, step, 0, micro_batch, slice(0, micro_batch), channels)
    data.close()
    return sum(n for key, n in counts.items() if key.startswith(("fields/", "climatology/"))) / (steps * micro_batch)


def run(a: argparse.Namespace) -> dict:
    """Measure the loader for a baseline rank and a D-CHAG rank; compare with training's consumption."""
    data = ERA5Forecast(a.assembled, "train", a.targets, [1.0])
    span = partition_bounds(len(data.channels), a.tp)[0]
    rows = []
    for reads, channels in (("tp-baseline rank: all channels", None),
                            (f"dchag rank 0 of tp {a.tp}: channels {span[0]}..{span[1] - 1}", slice(*span))):
        data.use_inputs(channels)
        rate = loader_rate(data, channels, a.micro_batch, a.steps, a.workers, a.prefetch)
        rows.append({"reads": reads, "channels": (span[1] - span[0]) if channels else len(data.channels),
                     "samples_per_s": rate,
                     "bytes_per_sample": bytes_per_sample(a.assembled, a.targets, channels, a.micro_batch,
                                                          min(a.steps, 20))})
    data.close()
    rows[1]["bytes_vs_baseline"] = rows[1]["bytes_per_sample"] / rows[0]["bytes_per_sample"]
    report = {"assembled": str(a.assembled), "workers": a.workers, "prefetch": a.prefetch,
              "micro_batch": a.micro_batch, "rows": rows}
    if a.summary and Path(a.summary).is_file():
        s = json.loads(Path(a.summary).read_text())
        mesh = s["mesh"]
        consumed = s["samples_per_s"] / (mesh["dp"] * mesh["fsdp"])
        report["training"] = {"summary": str(a.summary), "samples_per_s_per_rank": consumed}
        for r in rows:
            r["vs_training"] = r["samples_per_s"] / consumed
    return report


def table(report: dict) -> str:
    """The report as text."""
    lines = [f"loader: {report['assembled']}  workers={report['workers']} prefetch={report['prefetch']} "
             f"micro_batch={report['micro_batch']}"]
    train = report.get("training")
    if train:
        lines.append(f"training consumes {train['samples_per_s_per_rank']:.2f} samples/s per rank "
                     f"({train['summary']})")
    lines.append(f"{'reads':<40} {'channels':>8} {'samples/s':>10} {'x training':>11} {'KiB/sample':>11} "
                 f"{'x baseline':>11}")
    for r in report["rows"]:
        ratio = f"{r['vs_training']:>11.1f}" if "vs_training" in r else f"{'-':>11}"
        vs = f"{r['bytes_vs_baseline']:>11.2f}" if "bytes_vs_baseline" in r else f"{1.0:>11.2f}"
        lines.append(f"{r['reads']:<40} {r['channels']:>8} {r['samples_per_s']:>10.1f} {ratio} "
                     f"{r['bytes_per_sample'] / 1024:>11.1f} {vs}")
    lines.append("(KiB/sample: read from the stores per sample with the in-memory cache off, inputs and targets, "
                 "fields and climatology, shard indexes included)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Benchmark options (defaults: the embedded default's outputs)."""
    p = argparse.ArgumentParser(prog="dchag bench loader", description=__doc__.splitlines()[0])
    p.add_argument("--assembled", default="results/era5/assembled")
    p.add_argument("--summary", default="results/train/forecast-dchag-L/summary.json")
    p.add_argument("--targets", nargs="+", default=["z_500", "t_850", "u10", "t2m", "v10"])
    p.add_argument("--synthetic-channels", type=int, default=None,
                   help="benchmark a generated assembled-format store with this many channels instead")
    p.add_argument("--days", type=int, default=365, help="time steps of the generated store")
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Run the loader benchmark and print the table."""
    a = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if a.synthetic_channels:
            a.assembled = str(write_store(Path(tmp), a.synthetic_channels, a.days))
            a.targets = ["c000", "c001"]
        report = run(a)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    print(table(report))



if __name__ == "__main__":
    main()
