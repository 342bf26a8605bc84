"""The synthetic plant scenes behave like proximal images of plants where the pipeline measures them."""

import numpy as np
import pytest

from pipeline_src.hyperspectral.synthetic import LEAF_SPREAD, SHADING, make_scene

BANDS = 100


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(seed=s, lines=64, samples=96, bands=BANDS) for s in range(6)]


def _leaf_pixels(scene, leaf: int, min_pixels: int = 30):
    """(n, bands) true reflectance of one leaf's visible pixels, None if it shows too few."""
    sel = scene.leaf_ids == leaf
    return scene.reflectance[sel].astype(np.float64) if sel.sum() >= min_pixels else None


def test_leaf_labels_cover_the_leaves_and_nothing_else(scenes):
    for scene in scenes:
        assert np.array_equal(scene.leaf_ids > 0, scene.leaves)
        assert scene.leaf_ids.max() >= 1


def test_shading_scales_a_leafs_spectrum_without_changing_its_shape(scenes):
    """Within a leaf every pixel is one spectrum times a brightness; the brightness varies."""
    spans = []
    for scene in scenes:
        for leaf in range(1, scene.leaf_ids.max() + 1):
            px = _leaf_pixels(scene, leaf)
            if px is None:
                continue
            brightness = px.mean(axis=1)
            shape = px / brightness[:, None]
            assert np.abs(shape - shape[0]).max() < 1e-5 * shape.max()
            spans.append(brightness.max() / brightness.min())
    assert len(spans) >= 10
    tilt, curl = SHADING["tilt"][1], SHADING["curl"][1]
    assert max(spans) <= (1 + tilt) / ((1 - tilt) * (1 - curl)) + 1e-6
    assert np.median(spans) > 1.1, "leaves are barely shaded"


def test_brightness_is_a_smooth_field_over_each_leaf(scenes):
    """A cubic in the pixel coordinates fits a leaf's brightness exactly: no texture, no steps."""
    for scene in scenes:
        for leaf in range(1, scene.leaf_ids.max() + 1):
            sel = scene.leaf_ids == leaf
            if sel.sum() < 30:
                continue
            y, x = (c / 10.0 for c in np.nonzero(sel))
            basis = np.stack([y**i * x**j for i in range(4) for j in range(4 - i)], axis=1)
            brightness = scene.reflectance[sel].astype(np.float64).mean(axis=1)
            fit, *_ = np.linalg.lstsq(basis, brightness, rcond=None)
            assert np.abs(basis @ fit - brightness).max() < 1e-4 * brightness.mean()


def test_leaves_of_one_plant_look_alike_more_than_leaves_of_different_plants(scenes):
    """The chlorophyll-sensitive green-to-NIR ratio spreads less within a plant than across plants."""
    per_plant = []
    for scene in scenes:
        wl = scene.wavelengths
        green, nir = (wl > 540) & (wl < 560), (wl > 780) & (wl < 850)
        ratios = [px[:, green].mean() / px[:, nir].mean()
                  for leaf in range(1, scene.leaf_ids.max() + 1)
                  if (px := _leaf_pixels(scene, leaf)) is not None]
        if len(ratios) >= 2:
            per_plant.append(np.log(ratios))
    assert len(per_plant) >= 4
    within = np.mean([r.std() for r in per_plant])
    across = np.std([r.mean() for r in per_plant])
    assert within < across
    assert LEAF_SPREAD[0] < 0.5


def test_the_near_infrared_varies_over_a_plant_far_beyond_the_camera_noise(scenes):
    """Normalised per band over plant pixels, the NIR plateau must carry signal, not only noise.

    Unshaded PROSPECT leaves vary by 0.7-1.9% there (water and dry matter only), which the
    camera noise then dominates; leaf shading must lift it well above that.
    """
    for scene in scenes:
        nir = (scene.wavelengths > 780) & (scene.wavelengths < 850)
        plateau = scene.reflectance[scene.leaves][:, nir].mean(axis=1)
        assert plateau.std() / plateau.mean() > 0.04
