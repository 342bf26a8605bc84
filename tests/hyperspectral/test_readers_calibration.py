"""Every format and interleave reads back; calibration recovers the generator's reflectance."""

import numpy as np
import pytest

from pipeline_src.hyperspectral.bands import bin_bands, resample, trim
from pipeline_src.hyperspectral.calibrate import check_white, reference_spectrum, reflectance
from pipeline_src.hyperspectral.mask import iou, ndvi, plant_mask
from pipeline_src.hyperspectral.readers import open_cube
from pipeline_src.hyperspectral.synthetic import make_scene, write_scene
from pipeline_src.hyperspectral.writers import write_envi
from pipeline_src.io import InputError

FORMATS = [("envi", "bil", "<u2"), ("envi", "bip", ">u2"), ("envi", "bsq", "<f4"),
           ("camera", "bil", "<u2"), ("camera", "bip", ">u2"), ("camera", "bsq", "<u2"),
           ("hdf5", "bip", "<u2"), ("hdf5", "bil", "<f4")]


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=11, lines=40, samples=56, bands=120)


def _calibrated(paths):
    with open_cube(paths["raw"]) as c, open_cube(paths["white"]) as w, open_cube(paths["dark"]) as d:
        check_white(w)
        return reflectance(c.read(), reference_spectrum(w), reference_spectrum(d)), c


@pytest.mark.parametrize("fmt,interleave,dtype", FORMATS, ids=["-".join(f) for f in FORMATS])
def test_calibration_recovers_reflectance(scene, tmp_path, fmt, interleave, dtype):
    paths = write_scene(scene, tmp_path, "plant", fmt, interleave, dtype)
    refl, cube = _calibrated(paths)
    assert (cube.fmt, cube.interleave) == (fmt, interleave)
    assert (cube.lines, cube.samples, cube.bands) == scene.reflectance.shape
    np.testing.assert_allclose(cube.wavelengths, scene.wavelengths, atol=1e-3)
    err = refl - scene.reflectance
    # Noise-limited: sensor noise / (white - dark) is 0.005-0.015 in reflectance units.
    assert abs(err.mean()) < 1e-3
    assert np.median(np.abs(err)) < 3e-3 and np.percentile(np.abs(err), 99) < 1.5e-2
    assert iou(plant_mask(ndvi(refl, cube.wavelengths)), scene.leaves) > 0.95


def test_lines_stream_in_blocks(scene, tmp_path):
    paths = write_scene(scene, tmp_path, "plant", "envi", "bsq", "<u2")
    with open_cube(paths["raw"]) as c:
        whole = c.read()
        blocks = np.concatenate([c.read_lines(s, min(c.lines, s + 7)) for s in range(0, c.lines, 7)])
    np.testing.assert_array_equal(whole, blocks)


def _envi_text(header):
    return header.read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda h, d: d.write_bytes(d.read_bytes()[:-100]), "truncated"),
    (lambda h, d: h.write_text(_envi_text(h).replace("lines = 40", "lines = 41")), "the header implies"),
    (lambda h, d: h.write_text(_envi_text(h).split("wavelength units")[0]), "no wavelengths in the header"),
    (lambda h, d: h.write_text(_envi_text(h).replace("400.000, ", "999.000, ", 1)), "wavelengths are not increasing"),
    (lambda h, d: h.unlink(), "no header found"),
])
def test_bad_cubes_are_named(scene, tmp_path, edit, message):
    paths = write_scene(scene, tmp_path, "plant", "envi", "bil", "<u2")
    data = paths["raw"]
    edit(data.with_suffix(".hdr"), data)
    with pytest.raises(InputError, match=message) as err:
        open_cube(data)
    assert "plant" in str(err.value)


def test_saturated_white_reference_is_refused(scene, tmp_path):
    white = np.full((4, 8, len(scene.wavelengths)), 65535, dtype=np.uint16)
    data = write_envi(tmp_path / "white.hdr", white, scene.wavelengths)
    with open_cube(data) as w, pytest.raises(InputError, match="white reference is saturated: 100.0%"):
        check_white(w)


def test_camera_header_without_end_and_bad_hdf5(tmp_path, scene):
    paths = write_scene(scene, tmp_path, "cam", "camera", "bil", "<u2")
    hdr = paths["raw"].with_suffix(".hdr")
    hdr.write_text(hdr.read_text().replace("WAVELENGTHS_END\n", ""))
    with pytest.raises(InputError, match="no WAVELENGTHS_END"):
        open_cube(paths["raw"])
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="x.h5: cannot read HDF5"):
        open_cube(bad)


def test_band_trim_bin_resample():
    wl = np.linspace(400, 900, 11)  # 50 nm steps
    cube = np.broadcast_to(wl, (2, 3, 11)).astype(np.float32)
    assert trim(wl, 450, 850) == slice(1, 10)
    binned, bwl = bin_bands(cube, wl, 2)
    assert binned.shape == (2, 3, 5) and np.allclose(bwl, [425, 525, 625, 725, 825])
    np.testing.assert_allclose(binned[0, 0], bwl)
    target = np.array([410.0, 433.0, 899.0])
    np.testing.assert_allclose(resample(cube, wl, target)[1, 2], target, rtol=1e-6)
    with pytest.raises(ValueError, match="leaves the measured range"):
        resample(cube, wl, np.array([390.0]))
