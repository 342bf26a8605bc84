"""Write cubes in the formats the readers accept (synthetic data and tests), atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path

_ENVI_CODES = {"u1": 1, "i2": 2, "i4": 3, "f4": 4, "f8": 5, "u2": 12, "u4": 13}
_AXES = {"bil": (0, 2, 1), "bip": (0, 1, 2), "bsq": (2, 0, 1)}  # from (line, sample, band)


def _disk_bytes(cube: np.ndarray, interleave: str, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(np.transpose(cube, _AXES[interleave]).astype(dtype)).tobytes()


def write_envi(header: str | Path, cube: np.ndarray, wavelengths, interleave: str = "bil",
               dtype: str = "<u2", data_suffix: str = ".raw", description: str = "",
               band_names: tuple[str, ...] | None = None) -> Path:
    """ENVI header + raw data for a (lines, samples, bands) cube (wavelengths None and band_names
    for a raster that is not a spectrum); returns the data path."""
    header = Path(header)
    dt = np.dtype(dtype)
    lines, samples, bands = cube.shape
    text = (f"ENVI\ndescription = {{{description}}}\nsamples = {samples}\nlines = {lines}\n"
            f"bands = {bands}\nheader offset = 0\nfile type = ENVI Standard\n"
            f"data type = {_ENVI_CODES[dt.kind + str(dt.itemsize)]}\ninterleave = {interleave}\n"
            f"byte order = {1 if dt.byteorder == '>' else 0}\n")
    if wavelengths is not None:
        text += f"wavelength units = Nanometers\nwavelength = {{{', '.join(f'{w:.3f}' for w in wavelengths)}}}\n"
    if band_names:
        text += f"band names = {{{', '.join(band_names)}}}\n"
    data = header.with_suffix(data_suffix)
    with atomic_path(data) as tmp:
        tmp.write_bytes(_disk_bytes(cube, interleave, dt))
    with atomic_path(header) as tmp:
        tmp.write_text(text)
    return data


def write_camera(data: str | Path, cube: np.ndarray, wavelengths, dtype: str = "<u2") -> Path:
    """A camera-style .bil/.bip/.bsq (layout from the suffix) with its NROWS/NCOLS header."""
    data = Path(data)
    layout = data.suffix.lstrip(".").lower()
    dt = np.dtype(dtype)
    lines, samples, bands = cube.shape
    pixel = "FLOAT" if dt.kind == "f" else ("SIGNEDINT" if dt.kind == "i" else "UNSIGNEDINT")
    text = (f"BYTEORDER {'M' if dt.byteorder == '>' else 'I'}\nLAYOUT {layout.upper()}\n"
            f"NROWS {lines}\nNCOLS {samples}\nNBANDS {bands}\nNBITS {dt.itemsize * 8}\n"
            f"PIXELTYPE {pixel}\nWAVELENGTHS\n" + "\n".join(f"{w:.3f}" for w in wavelengths)
            + "\nWAVELENGTHS_END\n")
    with atomic_path(data) as tmp:
        tmp.write_bytes(_disk_bytes(cube, layout, dt))
    with atomic_path(data.with_suffix(".hdr")) as tmp:
        tmp.write_text(text)
    return data


def write_hdf5(path: str | Path, cube: np.ndarray, wavelengths, interleave: str = "bip",
               dtype: str = "<u2") -> Path:
    """HDF5 with dataset 'cube' (interleave attribute) and dataset 'wavelength' (nm)."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("cube", data=np.transpose(cube, _AXES[interleave]).astype(dtype),
                                  chunks=True)
            ds.attrs["interleave"] = interleave
            f.create_dataset("wavelength", data=np.asarray(wavelengths, dtype=np.float64))
    return path
