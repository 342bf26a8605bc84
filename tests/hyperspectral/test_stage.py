"""The hyperspectral stage on synthetic scenes: per-image preprocess, tiles, statistics, bad input."""

import copy

import numpy as np
import pytest
import zarr

from pipeline_src.config import validate_dict
from pipeline_src.hyperspectral.mask import iou
from pipeline_src.hyperspectral.preprocess import preprocess_image
from pipeline_src.hyperspectral.tiles import assign_splits, make_tiles
from pipeline_src.hyperspectral.synthetic import make_scene, write_scene
from pipeline_src.hyperspectral.writers import write_envi
from pipeline_src.io import InputError
from tests.conftest import SMALL

BANDS = 100


def _hs(**over):
    raw = copy.deepcopy(SMALL)
    raw["hyperspectral"] = {"bands": {"expected": BANDS, "bin": 2}, "tiles": {"size": [16, 16]},
                            "block_lines": 13, **over}
    return validate_dict(raw)["hyperspectral"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hs")
    out = {}
    for i in range(5):
        scene = make_scene(seed=100 + i, lines=48, samples=64, bands=BANDS)
        out[f"p{i}"] = (scene, write_scene(scene, folder, f"p{i}", "envi", "bil", "<u2"))
    return out


@pytest.fixture(scope="module")
def processed(scenes, tmp_path_factory):
    hs = _hs()
    folder = tmp_path_factory.mktemp("pre")
    done = {}
    for name, (scene, paths) in scenes.items():
        summary = preprocess_image(paths["raw"], paths["white"], paths["dark"], hs,
                                   folder / f"{name}.zarr", folder / f"{name}.json", traits=paths["traits"])
        done[name] = (folder / f"{name}.zarr", summary)
    return hs, done


def test_preprocess_writes_reflectance_mask_and_summary(scenes, processed):
    hs, done = processed
    for name, (store, summary) in done.items():
        scene = scenes[name][0]
        g = zarr.open_group(str(store), mode="r")
        wl = g["wavelength"][:]
        assert g["reflectance"].shape == (48, 64, wl.size) and wl[0] >= 405 and wl[-1] <= 895
        assert summary["bands_in"] == BANDS and summary["bands_out"] == wl.size
        mask = g["mask"][:].astype(bool)
        assert iou(mask, scene.leaves) > 0.95
        assert summary["plant_fraction"] == pytest.approx(mask.mean())
        # binned reflectance against the binned truth
        keep = (scene.wavelengths >= 405) & (scene.wavelengths <= 895)
        truth = scene.reflectance[..., keep]
        n = (truth.shape[-1] // 2) * 2
        truth = truth[..., :n].reshape(48, 64, -1, 2).mean(-1)
        assert np.median(np.abs(g["reflectance"][:] - truth)) < 3e-3


def test_tiles_have_shape_and_normalised_training_statistics(processed, tmp_path):
    hs, done = processed
    stats = make_tiles({n: p for n, (p, _) in done.items()}, hs, tmp_path)
    assert sum(stats["tiles"].values()) == 5 * (48 // 16) * (64 // 16)
    assert sorted(stats["splits"].values()).count("train") == 3
    train = zarr.open_group(str(tmp_path / "train.zarr"), mode="r")
    tiles, masks = train["tiles"][:], train["mask"][:].astype(bool)
    assert tiles.shape == (stats["tiles"]["train"], len(stats["wavelengths"]), 16, 16)
    plant = tiles.transpose(0, 2, 3, 1)[masks]  # (pixels, bands): training plant pixels
    np.testing.assert_allclose(plant.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(plant.std(0), 1.0, atol=1e-3)
    assert len(train.attrs["images"]) == tiles.shape[0]
    assert np.all(tiles.transpose(0, 2, 3, 1)[~masks] == 0.0)  # background masked


def test_leaf_traits_travel_from_the_scene_to_the_tiles(scenes, processed, tmp_path, caplog):
    """The synthetic scene's per-pixel PROSPECT traits, written as an ENVI raster beside the
    cubes, reach the preprocessed store and every tile at its origin; an image without a
    trait raster leaves the tiles without traits, with a log line."""
    import logging

    hs, done = processed
    for name, (store, summary) in done.items():
        g = zarr.open_group(str(store), mode="r")
        np.testing.assert_array_equal(g["traits"][:], scenes[name][0].traits)
        assert summary["traits"] == ["cab", "cw", "cm"] == list(g.attrs["traits"])
    stats = make_tiles({n: p for n, (p, _) in done.items()}, hs, tmp_path / "with")
    assert stats["traits"] == ["cab", "cw", "cm"]
    test = zarr.open_group(str(tmp_path / "with/test.zarr"), mode="r")
    for i, (image, (y, x)) in enumerate(zip(test.attrs["images"], test.attrs["origins"])):
        truth = scenes[image][0].traits[y:y + 16, x:x + 16].transpose(2, 0, 1)
        np.testing.assert_array_equal(test["traits"][i], truth)
    leaves = scenes["p0"][0].leaves
    assert np.isnan(scenes["p0"][0].traits[~leaves]).all() and (scenes["p0"][0].traits[leaves] > 0).all()
    bare = tmp_path / "bare.zarr"  # p0 again, preprocessed without its raster
    paths = scenes["p0"][1]
    preprocess_image(paths["raw"], paths["white"], paths["dark"], hs, bare, tmp_path / "bare.json")
    images = {**{n: p for n, (p, _) in done.items()}, "p0": bare}
    with caplog.at_level(logging.INFO):
        stats = make_tiles(images, hs, tmp_path / "without")
    assert stats["traits"] == [] and "tiles without traits" in caplog.text
    assert "traits" not in zarr.open_group(str(tmp_path / "without/train.zarr"), mode="r")


def test_training_tiles_may_overlap_but_held_out_tiles_never_do(processed, tmp_path):
    hs, done = processed
    images = {n: p for n, (p, _) in done.items()}
    plain = make_tiles(images, hs, tmp_path / "plain")
    dense = make_tiles(images, dict(hs, tiles=dict(hs["tiles"], train_stride=[8, 8])), tmp_path / "dense")
    assert dense["mean"] == plain["mean"] and dense["std"] == plain["std"]  # statistics are of the images
    assert dense["train_stride"] == [8, 8] and plain["train_stride"] == [16, 16]
    assert dense["tiles"]["train"] == 3 * 5 * 7 and dense["tiles"]["val"] == plain["tiles"]["val"]
    for split in ("val", "test"):
        a, b = (zarr.open_group(str(tmp_path / run / f"{split}.zarr"), mode="r") for run in ("plain", "dense"))
        np.testing.assert_array_equal(a["tiles"][:], b["tiles"][:])
    a, b = (zarr.open_group(str(tmp_path / run / "train.zarr"), mode="r") for run in ("plain", "dense"))
    origins = [(name, tuple(o)) for name, o in zip(b.attrs["images"], b.attrs["origins"])]
    assert len(set(origins)) == len(origins) and (origins[1][1][1] - origins[0][1][1]) == 8
    for i, (name, origin) in enumerate(zip(a.attrs["images"], a.attrs["origins"])):  # every plain tile is among them
        np.testing.assert_array_equal(b["tiles"][origins.index((name, tuple(origin)))], a["tiles"][i])


def test_splits_are_by_image_and_seeded():
    names = [f"img{i}" for i in range(10)]
    a = assign_splits(names, {"val": 0.2, "test": 0.2}, 0)
    assert a == assign_splits(list(reversed(names)), {"val": 0.2, "test": 0.2}, 0)
    assert sorted(a.values()).count("test") == 2 and sorted(a.values()).count("val") == 2
    assert a != assign_splits(names, {"val": 0.2, "test": 0.2}, 1)


def test_bad_images_are_refused_and_nothing_is_left(scenes, tmp_path):
    scene, paths = scenes["p0"]
    out, js = tmp_path / "x.zarr", tmp_path / "x.json"
    with pytest.raises(InputError, match="has 100 bands; hyperspectral.bands.expected is 500"):
        preprocess_image(paths["raw"], paths["white"], paths["dark"], _hs(bands={"expected": 500}), out, js)
    soil = make_scene(seed=5, lines=24, samples=32, bands=BANDS, n_leaves=(0, 0))
    bare = write_scene(soil, tmp_path, "bare", "envi", "bip", "<u2")
    with pytest.raises(InputError, match="bare.raw: no plant pixels") as err:
        preprocess_image(bare["raw"], bare["white"], bare["dark"], _hs(), out, js)
    assert "all background" in str(err.value)
    narrow = write_envi(tmp_path / "narrow_white.hdr", np.full((4, 10, BANDS), 3000, np.uint16),
                        scene.wavelengths)
    with pytest.raises(InputError, match="narrow_white.raw: white reference is 10 samples"):
        preprocess_image(paths["raw"], narrow, paths["dark"], _hs(), out, js)
    assert not out.exists() and not js.exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_benchmark_smoke(capsys):
    from pipeline_src.cli import main

    assert main(["bench", "hyperspectral", "--cubes", "1", "--lines", "32", "--samples", "48",
                 "--bands", "60"]) == 0
    out = capsys.readouterr().out
    assert "hdf5 bip" in out and "cubes/s" in out


def test_preprocess_streams_in_blocks(tmp_path):
    """Peak Python/numpy allocation stays far below the cube's size: it is read block by block."""
    import tracemalloc

    scene = make_scene(seed=3, lines=256, samples=128, bands=BANDS)
    paths = write_scene(scene, tmp_path, "big", "envi", "bsq", "<u2")
    full_float = 256 * 128 * BANDS * 4  # 13 MB; measured peak about 4 MB, mostly fixed overhead
    tracemalloc.start()
    try:
        preprocess_image(paths["raw"], paths["white"], paths["dark"], _hs(block_lines=8),
                         tmp_path / "big.zarr", tmp_path / "big.json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * full_float, (peak, full_float)
