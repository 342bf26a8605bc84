"""The leaf-trait probe's pieces: patch targets and spectra, ridge with grouped cross-validation."""

import numpy as np
import pytest

from pipeline_src.evaluate import probe


def test_patch_targets_average_plant_pixels_with_known_traits():
    traits = np.full((1, 2, 4, 8), np.nan, np.float32)  # one tile, 2 traits, 4 x 8 -> patches of 4: 1 x 2
    plants = np.zeros((1, 4, 8), bool)
    traits[0, :, :, :4] = np.arange(16, dtype=np.float32).reshape(4, 4)  # left patch: a leaf
    plants[0, :, :4] = True
    plants[0, 0, 4:6] = True  # right patch: 2 plant pixels of 16, no traits there
    keep, mean, fraction = probe.patch_targets(traits, plants, patch=4)
    assert keep.tolist() == [[True, False]] and fraction.tolist() == [[1.0, 0.0]]
    np.testing.assert_allclose(mean[0, 0], [7.5, 7.5])
    tiles = np.zeros((1, 3, 4, 8), np.float32)
    tiles[0, :, :, :4] = 2.0
    tiles[0, :, 0, 4:6] = 5.0
    spectra = probe.patch_spectra(tiles, plants, patch=4)
    np.testing.assert_allclose(spectra[0], [[2.0] * 3, [5.0] * 3])


def test_ridge_finds_a_linear_trait_and_not_noise():
    """Features that hold the trait linearly score R2 near 1 on held-out rows; features of pure
    noise near 0 or below (the probe does not flatter features that know nothing): the penalty
    is cross-validated over groups (plants), 40 groups of 10 rows here."""
    rng = np.random.default_rng(0)
    n, dim = 400, 20
    x = rng.normal(size=(n, dim))
    y = x @ rng.normal(size=dim) + 0.1 * rng.normal(size=n)
    groups = np.repeat(np.arange(40), 10)
    good = probe.fit_and_score(x[:300], y[:300], groups[:300], x[300:], y[300:])
    assert good["r2"] > 0.98 and good["nrmse"] < 0.15
    noise = rng.normal(size=(n, dim))
    bad = probe.fit_and_score(noise[:300], y[:300], groups[:300], noise[300:], y[300:])
    assert bad["r2"] < 0.1 and bad["alpha"] >= 10  # cross-validation chose a strong penalty
    # against numpy's least squares where the penalty hardly matters
    xs = (x[:300] - x[:300].mean(0)) / x[:300].std(0)
    w = probe._ridge(xs, (y[:300] - y[:300].mean()) / y[:300].std(), 1e-8)
    lstsq = np.linalg.lstsq(xs, (y[:300] - y[:300].mean()) / y[:300].std(), rcond=None)[0]
    np.testing.assert_allclose(w, lstsq, atol=1e-5)


def test_probe_reports_every_trait_and_feature_set():
    rng = np.random.default_rng(1)
    f = {name: (rng.normal(size=(50, 4)), rng.normal(size=(20, 4))) for name in probe.FEATURES}
    out = probe.probe(f, (rng.normal(size=(50, 2)), rng.normal(size=(20, 2))), np.arange(50) // 5, ["cab", "cw"])
    assert set(out) == {"cab", "cw"} and all(set(v) == {*probe.FEATURES, "training mean"} for v in out.values())
    constant = probe.constant_score(np.zeros(5), np.array([1.0, -1.0]))
    assert constant["r2"] == 0.0 and constant["nrmse"] == 1.0
    assert all(np.isfinite(s["r2"]) for v in out.values() for s in v.values())
