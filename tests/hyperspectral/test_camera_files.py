"""Cubes as cameras write them: 12-bit counts in 16-bit words, references as plain frames
without wavelengths, HDF5 files holding the scene and its references. Headers and HDF5
files here are written by hand (text and h5py), not by the pipeline's writers."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest

from pipeline_src.config import validate_dict
from pipeline_src.hyperspectral.readers import cube_files, open_cube
from pipeline_src.hyperspectral.preprocess import preprocess_image
from pipeline_src.hyperspectral.tiles import make_tiles
from pipeline_src.hyperspectral.synthetic import make_scene
from pipeline_src.hyperspectral.writers import write_envi
from pipeline_src.io import InputError
from tests.conftest import SMALL

BANDS = 80


def _hs():
    raw = copy.deepcopy(SMALL)
    raw["hyperspectral"] = {"bands": {"expected": BANDS, "bin": 2}, "tiles": {"size": [16, 16]}}
    return validate_dict(raw)["hyperspectral"]


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=21, lines=40, samples=48, bands=BANDS, white_level=3400.0, dark_level=120.0)


def _camera(folder, stem, counts: np.ndarray, wavelengths=None, nbits=12):
    """A camera .bil and its header, written by hand: BIL = (line, band, sample), little-endian uint16."""
    lines, samples, bands = counts.shape
    data = folder / f"{stem}.bil"
    np.rint(counts).clip(0, 65535).astype("<u2").transpose(0, 2, 1).tofile(data)
    text = f"BYTEORDER I\nLAYOUT BIL\nNROWS {lines}\nNCOLS {samples}\nNBANDS {bands}\nNBITS {nbits}\n"
    if wavelengths is not None:
        text += "WAVELENGTHS\n" + "\n".join(f"{w:.2f}" for w in wavelengths) + "\nWAVELENGTHS_END\n"
    (folder / f"{stem}.hdr").write_text(text)
    return data


def _refl_error(zarr_path, scene):
    import zarr

    g = zarr.open_group(str(zarr_path), mode="r")
    keep = (scene.wavelengths >= 405) & (scene.wavelengths <= 895)
    truth = scene.reflectance[..., keep]
    n = (truth.shape[-1] // 2) * 2
    truth = truth[..., :n].reshape(*truth.shape[:2], -1, 2).mean(-1)
    return np.median(np.abs(g["reflectance"][:] - truth))


def test_12_bit_camera_with_plain_frame_references(scene, tmp_path, caplog):
    raw = _camera(tmp_path, "leaf", scene.raw, scene.wavelengths)
    white = _camera(tmp_path, "leaf_white", scene.white)  # plain frames: no WAVELENGTHS block
    dark = _camera(tmp_path, "leaf_dark", scene.dark)
    with open_cube(raw) as cube:
        assert cube.bit_depth == 12 and cube.max_value == 4095 and cube.dtype == np.dtype("<u2")
    caplog.set_level("INFO")
    summary = preprocess_image(raw, white, dark, _hs(), tmp_path / "leaf.zarr", tmp_path / "leaf.json")
    assert summary["bit_depth"] == 12
    assert "white reference states no wavelengths; taking the image's (80 bands" in caplog.text
    assert _refl_error(tmp_path / "leaf.zarr", scene) < 3e-3


def test_12_bit_saturation_and_range(scene, tmp_path):
    raw = _camera(tmp_path, "leaf", scene.raw, scene.wavelengths)
    dark = _camera(tmp_path, "leaf_dark", scene.dark)
    hot = _camera(tmp_path, "hot_white", np.minimum(scene.white * 1.3, 4095))  # 12-bit clipped
    with pytest.raises(InputError, match=r"hot_white.bil: white reference is saturated: .*% of values at "
                                         r"the sensor maximum 4095"):
        preprocess_image(raw, hot, dark, _hs(), tmp_path / "o.zarr", tmp_path / "o.json")
    spoiled = scene.raw.copy()
    spoiled[17, 3, 9] = 5000  # impossible for a 12-bit sensor
    bad = _camera(tmp_path, "bad", spoiled, scene.wavelengths)
    white = _camera(tmp_path, "leaf_white", scene.white)
    with pytest.raises(InputError, match=r"bad.bil: count 5000 in line 17 is above the 12-bit range"):
        preprocess_image(bad, white, dark, _hs(), tmp_path / "o.zarr", tmp_path / "o.json")
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.json").exists()


def test_reference_without_wavelengths_and_other_band_count_is_refused(scene, tmp_path):
    raw = _camera(tmp_path, "leaf", scene.raw, scene.wavelengths)
    dark = _camera(tmp_path, "leaf_dark", scene.dark)
    short = _camera(tmp_path, "short_white", scene.white[..., :60])
    with pytest.raises(InputError, match=r"short_white.bil: white reference is 48 samples x 60 bands, "
                                         r"the image leaf.bil is 48 x 80"):
        preprocess_image(raw, short, dark, _hs(), tmp_path / "o.zarr", tmp_path / "o.json")
    with pytest.raises(InputError, match="no wavelengths in the header"):  # the scene itself needs them
        preprocess_image(short, short, dark, _hs(), tmp_path / "o.zarr", tmp_path / "o.json")


def _h5(path, datasets: dict, wavelengths):
    with h5py.File(path, "w") as f:
        for name, counts in datasets.items():  # (lines, samples, bands): h5py's default bip order
            f.create_dataset(name, data=np.rint(counts).astype("<u2"))
        f.create_dataset("wavelength", data=wavelengths)
    return path


def test_hdf5_with_references_inside(scene, tmp_path):
    together = _h5(tmp_path / "scan.h5", {"cube": scene.raw, "white": scene.white, "dark": scene.dark},
                   scene.wavelengths)
    summary = preprocess_image(together, together, together, _hs(), tmp_path / "a.zarr", tmp_path / "a.json")
    assert summary["datasets"] == {"raw": "cube", "white": "white", "dark": "dark"}
    assert _refl_error(tmp_path / "a.zarr", scene) < 3e-3
    named = _h5(tmp_path / "named.h5", {"scan": scene.raw, "wref": scene.white, "dref": scene.dark},
                scene.wavelengths)
    names = {"raw": "scan", "white": "wref", "dark": "dref"}
    summary = preprocess_image(named, named, named, _hs(), tmp_path / "b.zarr", tmp_path / "b.json", names)
    assert summary["datasets"] == names and _refl_error(tmp_path / "b.zarr", scene) < 3e-3


def test_hdf5_reference_refusals(scene, tmp_path):
    alone = _h5(tmp_path / "alone.h5", {"cube": scene.raw}, scene.wavelengths)
    white = _h5(tmp_path / "w.h5", {"cube": scene.white}, scene.wavelengths)
    out = (tmp_path / "o.zarr", tmp_path / "o.json")
    with pytest.raises(InputError, match=r"alone.h5: the white reference is the scene's own file and it holds "
                                         r"no 'white' dataset \(3-D datasets: cube\); name it in "
                                         r"hyperspectral.files\[\].datasets.white"):
        preprocess_image(alone, alone, white, _hs(), *out)
    with pytest.raises(InputError, match=r"alone.h5: no 3-D dataset 'wref' for the white cube"):
        preprocess_image(alone, alone, white, _hs(), *out, {"white": "wref"})
    with pytest.raises(InputError, match=r"the dark reference dataset 'cube' is the scene's \(datasets.raw 'cube'\)"):
        preprocess_image(alone, white, alone, _hs(), *out, {"raw": "cube", "dark": "cube"})
    # the scene left to its default ('cube') and the reference named as that same dataset
    with pytest.raises(InputError, match=r"alone.h5: the white reference dataset 'cube' is the scene's \(the scene "
                                         r"found by default\); name the scene's dataset"):
        preprocess_image(alone, alone, white, _hs(), *out, {"white": "cube"})
    envi_like = _camera(tmp_path, "leaf", scene.raw, scene.wavelengths)
    with pytest.raises(InputError, match="leaf.bil: the white reference is the scene's own file"):
        preprocess_image(envi_like, envi_like, white, _hs(), *out)
    assert not out[0].exists()


def test_cube_files_lists_header_and_data(tmp_path, scene):
    raw = _camera(tmp_path, "leaf", scene.raw[:4], scene.wavelengths)
    assert cube_files(tmp_path / "leaf.hdr") == [str(raw), str(tmp_path / "leaf.hdr")]
    assert cube_files(raw) == [str(raw), str(tmp_path / "leaf.hdr")]
    assert cube_files(tmp_path / "x.h5") == [str(tmp_path / "x.h5")]


def test_empty_splits_warn_or_refuse(scene, tmp_path, caplog):
    hs = _hs()
    raw = _camera(tmp_path, "leaf", scene.raw, scene.wavelengths)
    white, dark = _camera(tmp_path, "w", scene.white), _camera(tmp_path, "d", scene.dark)
    images = {}
    for name in ("one", "two"):
        preprocess_image(raw, white, dark, hs, tmp_path / f"{name}.zarr", tmp_path / f"{name}.json")
        images[name] = tmp_path / f"{name}.zarr"
    with pytest.raises(InputError, match=r"the val split is empty: none of the 2 image\(s\) is assigned to it; "
                                         r"evaluation of mae-x needs it \(give at least 3 images"):
        make_tiles(images, hs, tmp_path / "tiles", {"val": "evaluation of mae-x"})
    assert not (tmp_path / "tiles").exists()
    caplog.set_level("WARNING")
    stats = make_tiles(images, hs, tmp_path / "tiles")
    assert stats["empty_splits"] == ["val", "test"] and stats["tiles"]["train"] > 0
    assert "the test split is empty" in caplog.text
    strict = dict(hs, tiles=dict(hs["tiles"], min_plant_fraction=0.99))
    with pytest.raises(InputError, match=r"the train split is empty: its 2 image\(s\) give no tile with at "
                                         r"least 99% plant pixels"):
        make_tiles(images, strict, tmp_path / "tiles2", {"train": "training of mae-x"})


def test_envi_nbits_sets_the_saturation_level(scene, tmp_path):
    """An ENVI header's `nbits = 12` (uint16 words): the white reference is checked against 4095."""
    def envi(stem, counts, nbits="12"):
        data = write_envi(tmp_path / f"{stem}.hdr", np.rint(counts), scene.wavelengths)
        header = tmp_path / f"{stem}.hdr"
        header.write_text(header.read_text() + f"nbits = {nbits}\n")
        return data

    raw, dark = envi("leaf", scene.raw), envi("leaf_dark", scene.dark)
    with open_cube(raw) as cube:
        assert cube.fmt == "envi" and cube.bit_depth == 12 and cube.max_value == 4095
    hot = envi("hot_white", np.minimum(scene.white * 1.3, 4095))
    with pytest.raises(InputError, match=r"hot_white.raw: white reference is saturated: .*sensor maximum 4095"):
        preprocess_image(raw, hot, dark, _hs(), tmp_path / "o.zarr", tmp_path / "o.json")
    with pytest.raises(InputError, match=r"odd.hdr: nbits 20 does not fit the 16-bit data type"):
        open_cube(envi("odd", scene.raw, "20"))
