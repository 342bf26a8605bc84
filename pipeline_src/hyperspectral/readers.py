"""One lazy interface over the cube formats plant-phenotyping cameras write.

- ENVI header + raw (BIL, BIP, BSQ; uint8/int16/uint16/float32; either byte order), read
  through SPy (`spectral`), memory-mapped.
- The non-ENVI camera header (NROWS, NCOLS, NBANDS, NBITS, LAYOUT, BYTEORDER,
  WAVELENGTHS ... WAVELENGTHS_END) next to a .bil/.bip/.bsq file, memory-mapped; 10-, 12-
  and 14-bit sensors stored in 16-bit words (NBITS 12) are read with their real range.
- HDF5 with 3-D cube datasets (the scene, and possibly its white and dark references,
  chosen by name) and a wavelength dataset, read by slices (h5py).

References written as plain frames carry no wavelengths: opened with
`wavelengths_required=False` they get `wavelengths = None`, and the caller takes the scene's.

Every reader yields lines (rows) as float32 (n_lines, samples, bands) so a cube larger
than memory streams block by block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import InputError

INTERLEAVES = ("bil", "bip", "bsq")
# axis order of each interleave on disk, in terms of (line, sample, band)
_ORDER = {"bil": ("line", "band", "sample"), "bip": ("line", "sample", "band"),
          "bsq": ("band", "line", "sample")}


@dataclass
class Cube:
    """A hyperspectral cube on disk: shape (lines, samples, bands), wavelengths in nm."""

    path: Path
    lines: int
    samples: int
    bands: int
    wavelengths: np.ndarray
    interleave: str
    dtype: np.dtype
    fmt: str
    _read: Callable[[int, int], np.ndarray]
    close: Callable[[], None] = lambda: None
    bit_depth: int | None = None  # bits the sensor digitises when fewer than the word's (NBITS 12)
    dataset: str | None = None  # the HDF5 dataset read

    @property
    def max_value(self) -> float | None:
        """The sensor's largest count (its saturation): 2**bit_depth - 1, or the integer type's maximum."""
        if self.bit_depth:
            return float(2**self.bit_depth - 1)
        return float(np.iinfo(self.dtype).max) if self.dtype.kind in "ui" else None

    def read_lines(self, start: int, stop: int) -> np.ndarray:
        """Lines [start, stop) as float32 (n, samples, bands); InputError on counts above the bit depth."""
        block = np.asarray(self._read(start, stop), dtype=np.float32)
        if self.bit_depth and block.size and block.max() > self.max_value:
            line = start + int(np.argwhere(block > self.max_value)[0][0])
            raise InputError(self.path, f"count {block.max():g} in line {line} is above the {self.bit_depth}-bit "
                                        f"range the header states (at most {self.max_value:g}); wrong NBITS?")
        return block

    def read(self) -> np.ndarray:
        """The whole cube as float32 (lines, samples, bands); for small cubes."""
        return self.read_lines(0, self.lines)

    @property
    def nbytes(self) -> int:
        """Size of the cube's data on disk."""
        return self.lines * self.samples * self.bands * self.dtype.itemsize

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_wavelengths(path, wavelengths, bands: int, required: bool = True) -> np.ndarray | None:
    """Wavelengths as float64 nm; InputError if the wrong count or not increasing, or missing
    when `required` (None when missing and not required)."""
    if wavelengths is None or len(wavelengths) == 0:
        if not required:
            return None
        raise InputError(path, "no wavelengths in the header")
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.size != bands:
        raise InputError(path, f"{wl.size} wavelengths for {bands} bands")
    if not np.all(np.diff(wl) > 0):
        bad = int(np.argmax(np.diff(wl) <= 0))
        raise InputError(path, f"wavelengths are not increasing (band {bad}: {wl[bad]:g} nm, "
                               f"band {bad + 1}: {wl[bad + 1]:g} nm)")
    if wl.max() < 100:  # micrometres
        wl = wl * 1000.0
    return wl


def _check_size(path: Path, shape_lsb: tuple[int, int, int], dtype: np.dtype, offset: int) -> None:
    lines, samples, bands = shape_lsb
    expected = offset + lines * samples * bands * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise InputError(path, f"raw data has {actual} bytes, the header implies {expected} "
                               f"({lines} lines x {samples} samples x {bands} bands x "
                               f"{dtype.itemsize} bytes{f' + {offset} offset' if offset else ''})"
                               f"{': truncated?' if actual < expected else ''}")


def _memmap_reader(path: Path, shape_lsb: tuple[int, int, int], interleave: str, dtype: np.dtype,
                   offset: int = 0):
    _check_size(path, shape_lsb, dtype, offset)
    size = dict(zip(("line", "sample", "band"), shape_lsb))
    disk_shape = tuple(size[a] for a in _ORDER[interleave])
    mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=disk_shape)
    perm = [_ORDER[interleave].index(a) for a in ("line", "sample", "band")]
    line_axis = _ORDER[interleave].index("line")

    def read(start, stop):
        sel = [slice(None)] * 3
        sel[line_axis] = slice(start, stop)
        return np.transpose(mm[tuple(sel)], perm)

    return read, (lambda: mm._mmap.close() if mm._mmap is not None else None)


def _open_envi(header: Path, data: Path, wavelengths_required: bool = True) -> Cube:
    import spectral.io.envi as envi

    try:
        meta = envi.read_envi_header(str(header))
    except Exception as err:  # SPy raises its own error types for malformed headers
        raise InputError(header, f"unreadable ENVI header ({type(err).__name__}: {err})") from None
    try:
        lines, samples, bands = int(meta["lines"]), int(meta["samples"]), int(meta["bands"])
        code = int(meta["data type"])
    except KeyError as err:
        raise InputError(header, f"ENVI header lacks {err.args[0]!r}") from None
    interleave = meta.get("interleave", "bsq").lower()
    if interleave not in INTERLEAVES:
        raise InputError(header, f"unknown interleave {interleave!r}")
    codes = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4"}
    if code not in codes:
        raise InputError(header, f"unsupported ENVI data type {code}")
    order = ">" if int(meta.get("byte order", 0)) == 1 else "<"
    dtype = np.dtype(order + codes[code])
    wl = check_wavelengths(header, meta.get("wavelength"), bands, wavelengths_required)
    offset = int(meta.get("header offset", 0))
    _check_size(data, (lines, samples, bands), dtype, offset)  # SPy would not say "truncated"
    try:
        spy = envi.open(str(header), str(data)).open_memmap(interleave="bip")  # (lines, samples, bands)
    except Exception as err:  # SPy raises its own error types
        raise InputError(data, f"SPy cannot map the cube ({type(err).__name__}: {err})") from None
    close = lambda: spy._mmap.close() if getattr(spy, "_mmap", None) is not None else None  # noqa: E731
    return Cube(data, lines, samples, bands, wl, interleave, dtype, "envi", lambda a, b: spy[a:b], close,
                bit_depth=_envi_bit_depth(header, meta, dtype))


def _envi_bit_depth(header: Path, meta: dict, dtype: np.dtype) -> int | None:
    """The sensor's bits when an ENVI header states fewer than its integer words hold (`nbits = 12`,
    or `bit depth`, as some cameras write), else None."""
    stated = meta.get("nbits", meta.get("bit depth"))
    if stated is None or dtype.kind not in "ui":
        return None
    try:
        bits = int(str(stated).strip())
    except ValueError:
        raise InputError(header, f"nbits {stated!r} is not a number of bits") from None
    if not 1 <= bits <= dtype.itemsize * 8:
        raise InputError(header, f"nbits {bits} does not fit the {dtype.itemsize * 8}-bit data type")
    return bits if bits < dtype.itemsize * 8 else None


_CAMERA_KEY = re.compile(r"^\s*([A-Z_]+)\s*[=:]?\s*(.*?)\s*$")


def parse_camera_header(header: Path) -> tuple[dict, list[float]]:
    """Keys and wavelengths of a camera-style header (NROWS ... WAVELENGTHS ... WAVELENGTHS_END)."""
    keys, wavelengths, in_wl = {}, [], False
    for raw in header.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if in_wl:
            if line.upper() == "WAVELENGTHS_END":
                in_wl = False
                continue
            try:
                wavelengths += [float(x) for x in re.split(r"[,\s]+", line) if x]
            except ValueError:
                raise InputError(header, f"bad wavelength line {line!r}") from None
            continue
        if line.upper() == "WAVELENGTHS":
            in_wl = True
            continue
        m = _CAMERA_KEY.match(line)
        if m:
            keys[m.group(1).upper()] = m.group(2)
    if in_wl:
        raise InputError(header, "WAVELENGTHS block has no WAVELENGTHS_END")
    return keys, wavelengths


def _open_camera(header: Path, data: Path, wavelengths_required: bool = True) -> Cube:
    keys, wavelengths = parse_camera_header(header)
    try:
        lines, samples, bands = int(keys["NROWS"]), int(keys["NCOLS"]), int(keys["NBANDS"])
        nbits = int(keys.get("NBITS", 16))
    except KeyError as err:
        raise InputError(header, f"camera header lacks {err.args[0]}") from None
    layout = keys.get("LAYOUT", data.suffix.lstrip(".")).lower()
    if layout not in INTERLEAVES:
        raise InputError(header, f"unknown LAYOUT {layout!r}")
    pixel = keys.get("PIXELTYPE", "FLOAT" if nbits == 32 else "UNSIGNEDINT").upper()
    kinds = {(8, "UNSIGNEDINT"): "u1", (16, "UNSIGNEDINT"): "u2", (16, "SIGNEDINT"): "i2",
             (32, "FLOAT"): "f4", (32, "UNSIGNEDINT"): "u4"}
    word = 16 if (pixel == "UNSIGNEDINT" and 8 < nbits < 16) else nbits  # 10/12/14-bit counts in 16-bit words
    if (word, pixel) not in kinds:
        raise InputError(header, f"unsupported NBITS {nbits} / PIXELTYPE {pixel}")
    order = ">" if keys.get("BYTEORDER", "I").upper().startswith("M") else "<"
    dtype = np.dtype(order + kinds[(word, pixel)])
    wl = check_wavelengths(header, wavelengths, bands, wavelengths_required)
    offset = int(keys.get("SKIPBYTES", 0))
    read, close = _memmap_reader(data, (lines, samples, bands), layout, dtype, offset)
    return Cube(data, lines, samples, bands, wl, layout, dtype, "camera", read, close,
                bit_depth=nbits if word != nbits else None)


REFERENCE_NAMES = {"white": ("white", "white_reference", "white_ref", "wref"),
                   "dark": ("dark", "dark_reference", "dark_ref", "dref")}


def _pick_dataset(path: Path, cubes: list[str], dataset: str | None, role: str, shared: bool) -> str:
    """The 3-D dataset to read for `role` (raw, white or dark): named, or found by convention."""
    if dataset is not None:
        if dataset not in cubes:
            raise InputError(path, f"no 3-D dataset {dataset!r} for the {role} cube "
                                   f"(3-D datasets: {', '.join(cubes) or 'none'})")
        return dataset
    if role in REFERENCE_NAMES:
        named = [c for c in cubes if c.lower() in REFERENCE_NAMES[role]]
        if named:
            return named[0]
        if shared:
            raise InputError(path, f"the {role} reference is the scene's own file and it holds no "
                                   f"{role!r} dataset (3-D datasets: {', '.join(cubes)}); name it in "
                                   f"hyperspectral.files[].datasets.{role}")
    refs = {n for names in REFERENCE_NAMES.values() for n in names}
    scenes = [c for c in cubes if c.lower() not in refs] or cubes
    return "cube" if "cube" in scenes else scenes[0]


def _open_hdf5(path: Path, dataset: str | None = None, role: str = "raw", shared: bool = False,
               wavelengths_required: bool = True) -> Cube:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, f"cannot read HDF5 ({err}); truncated or not HDF5?") from None
    cubes = [k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.ndim == 3]
    wl_names = [k for k in f if k.lower() in ("wavelength", "wavelengths", "wl")]
    if not cubes:
        f.close()
        raise InputError(path, "no 3-D cube dataset in the HDF5 file")
    try:
        name = _pick_dataset(path, cubes, dataset, role, shared)
    except InputError:
        f.close()
        raise
    ds = f[name]
    interleave = str(ds.attrs.get("interleave", "bip")).lower()
    if interleave not in INTERLEAVES:
        f.close()
        raise InputError(path, f"unknown interleave attribute {interleave!r} on {name}")
    axes = _ORDER[interleave]
    shape = dict(zip(axes, ds.shape))
    lines, samples, bands = shape["line"], shape["sample"], shape["band"]
    try:
        wl = check_wavelengths(path, f[wl_names[0]][()] if wl_names else None, bands, wavelengths_required)
    except InputError:
        f.close()
        raise
    perm = [axes.index(a) for a in ("line", "sample", "band")]

    def read(start, stop):
        sel = [slice(None)] * 3
        sel[axes.index("line")] = slice(start, stop)
        return np.transpose(ds[tuple(sel)], perm)

    return Cube(path, lines, samples, bands, wl, interleave, ds.dtype, "hdf5", read, f.close, dataset=name)


def find_header(path: Path) -> Path | None:
    """The header next to a data file (name.hdr or name.ext.hdr), or path itself if it is one."""
    if path.suffix.lower() == ".hdr":
        return path
    for cand in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if cand.is_file():
            return cand
    return None


def find_data(header: Path) -> Path | None:
    """The raw data file next to a header (no extension, .raw, .img, .dat, .bil, .bip, .bsq)."""
    stem = header.with_suffix("")
    for cand in [stem] + [stem.with_suffix(s) for s in (".raw", ".img", ".dat", ".bil", ".bip", ".bsq")]:
        if cand.is_file() and cand != header:
            return cand
    return None


HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".nc")


def open_cube(path: str | Path, dataset: str | None = None, role: str = "raw", shared: bool = False,
              wavelengths_required: bool = True) -> Cube:
    """Open any supported cube (detected from the files), lazily; InputError naming the file.

    HDF5 only: `dataset` names the 3-D dataset; without it a white or dark `role` takes a
    dataset named after the role, and `shared` (the scene's own file) refuses to fall back
    to the scene's cube.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _open_hdf5(path, dataset, role, shared, wavelengths_required)
    if dataset is not None:
        raise InputError(path, f"a dataset name ({dataset!r}) is given but the file is not HDF5")
    header = find_header(path)
    if header is None:
        raise InputError(path, "no header found next to the data (expected a .hdr file)")
    data = path if path != header else find_data(header)
    if data is None:
        raise InputError(header, "no raw data file next to the header")
    first = header.read_text(errors="replace").lstrip()[:4]
    if first.upper() == "ENVI":
        return _open_envi(header, data, wavelengths_required)
    return _open_camera(header, data, wavelengths_required)


def cube_files(path: str | Path) -> list[str]:
    """Every file a cube is read from (its header and its data, or the one HDF5 file), for
    declaring them as workflow inputs; the path itself when nothing is found yet."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES or not path.exists():
        return [str(path)]
    header = find_header(path)
    data = path if path != header else (find_data(header) if header else None)
    return sorted({str(p) for p in (path, header, data) if p is not None})


def read_traits(path: str | Path, lines: int, samples: int) -> tuple[np.ndarray, list[str]]:
    """A leaf-trait raster (ENVI, one band per trait, NaN where there is no leaf) aligned with a
    cube of lines x samples: (lines, samples, traits) float32 and the trait names (its band names)."""
    import spectral.io.envi as envi

    with open_cube(path, wavelengths_required=False) as cube:
        if (cube.lines, cube.samples) != (lines, samples):
            raise InputError(cube.path, f"trait raster is {cube.lines} x {cube.samples}, the cube "
                                        f"{lines} x {samples}: they must cover the same pixels")
        values = np.array(cube.read_lines(0, cube.lines), np.float32)  # a copy: the map closes below
        header = find_header(cube.path)
    names = [str(n).strip() for n in envi.read_envi_header(str(header)).get("band names", [])]
    if len(names) != values.shape[2]:
        raise InputError(header, f"a trait raster names each band (`band names`): {values.shape[2]} bands, "
                                 f"{len(names)} names")
    return values, names
