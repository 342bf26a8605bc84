"""Benchmark: hyperspectral preprocessing throughput (cubes/s, MB/s of raw data) per format.

Writes synthetic scenes once per format/interleave, then times preprocess_image (read,
calibrate, band handling, mask, Zarr write) on each, and prints ratios to ENVI BIL.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from ..config import validate_dict
from ..hyperspectral.preprocess import preprocess_image
from ..hyperspectral.synthetic import make_scene, write_scene

CASES = [("envi", "bil", "<u2"), ("envi", "bip", "<u2"), ("envi", "bsq", "<u2"),
         ("envi", "bil", "<f4"), ("camera", "bil", "<u2"), ("hdf5", "bip", "<u2")]


def parse_args(argv=None) -> argparse.Namespace:
    """Benchmark options."""
    p = argparse.ArgumentParser(prog="dchag bench hyperspectral", description=__doc__.splitlines()[0])
    p.add_argument("--cubes", type=int, default=3)
    p.add_argument("--lines", type=int, default=128)
    p.add_argument("--samples", type=int, default=192)
    p.add_argument("--bands", type=int, default=500)
    p.add_argument("--block-lines", type=int, default=64)
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Run every case and print cubes/s and MB/s."""
    a = parse_args(argv)
    hs = validate_dict({"era5": {"source": "synthetic", "years": {"train": [2000], "val": [2001], "test": [2002]}},
                        "hyperspectral": {"bands": {"expected": a.bands}, "block_lines": a.block_lines}})
    hs = copy.deepcopy(hs["hyperspectral"])
    scenes = [make_scene(seed=i, lines=a.lines, samples=a.samples, bands=a.bands) for i in range(a.cubes)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = write_scene(scenes[0], Path(tmp) / "warm", "w", "envi", "bil", "<u2")
        preprocess_image(warm["raw"], warm["white"], warm["dark"], hs, Path(tmp) / "w.zarr", Path(tmp) / "w.json")
        for fmt, interleave, dtype in CASES:
            folder = Path(tmp) / f"{fmt}-{interleave}-{dtype[1:]}"
            paths = [write_scene(s, folder, f"c{i}", fmt, interleave, dtype) for i, s in enumerate(scenes)]
            t0 = time.perf_counter()
            nbytes = 0
            for i, p in enumerate(paths):
                summary = preprocess_image(p["raw"], p["white"], p["dark"], hs, folder / f"o{i}.zarr",
                                           folder / f"o{i}.json")
                nbytes += summary["bytes_read"]
            seconds = time.perf_counter() - t0
            rows.append((f"{fmt} {interleave} {dtype}", a.cubes / seconds, nbytes / 1e6 / seconds))
    base = rows[0][2]
    print(f"{a.cubes} cubes of {a.lines} x {a.samples} x {a.bands}, blocks of {a.block_lines} lines")
    print(f"{'format':>20} {'cubes/s':>9} {'MB/s':>8} {'vs ENVI BIL':>12}")
    for name, cps, mbs in rows:
        print(f"{name:>20} {cps:>9.2f} {mbs:>8.1f} {mbs / base:>12.2f}")


if __name__ == "__main__":
    main()
