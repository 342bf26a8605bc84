"""The leaf oracles of `dchag bench oracles` on hand-built tiles with known answers."""

import numpy as np

from pipeline_src.bench.oracles import leaf_predictions


def _tile():
    """Two leaves of known spectra; leaf 1 shaded by a brightness plane, leaf 2 flat."""
    rng = np.random.default_rng(0)
    c, h, w = 6, 16, 16
    mean, std = rng.uniform(0.1, 0.3, c), rng.uniform(0.05, 0.1, c)
    leaves = np.zeros((h, w), dtype=np.int16)
    leaves[2:14, 1:9], leaves[4:12, 10:15] = 1, 2
    yy, xx = np.mgrid[0:h, 0:w]
    bright = 0.8 + 0.02 * yy - 0.015 * xx
    refl = np.zeros((c, h, w))
    refl[:, leaves == 1] = rng.uniform(0.2, 0.5, c)[:, None] * bright[leaves == 1][None]
    refl[:, leaves == 2] = rng.uniform(0.2, 0.5, c)[:, None]
    x = np.where(leaves > 0, (refl - mean[:, None, None]) / std[:, None, None], 0.0)
    return x, leaves, mean, std


def test_leaf_shading_extrapolates_a_plane_and_leaf_mean_does_not():
    x, leaves, mean, std = _tile()
    visible = (leaves == 1) & (np.arange(16)[None, :] < 5)  # the leaf's left half only
    fallback = np.full_like(x, 7.0)
    out = leaf_predictions(x, visible, leaves, fallback, mean, std)
    hidden = (leaves == 1) & ~visible
    shading_err = np.abs(out["leaf_shading"][:, hidden] - x[:, hidden]).max()
    mean_err = np.abs(out["leaf_mean"][:, hidden] - x[:, hidden]).max()
    assert shading_err < 0.05 * mean_err  # the plane carries the shading past the visible half
    np.testing.assert_allclose(out["leaf_mean"][:, hidden], x[:, visible].mean(1)[:, None].repeat(hidden.sum(), 1))
    # leaf 2 shows no visible pixel, and background is not a leaf: both keep the fallback
    assert (out["leaf_shading"][:, leaves == 2] == 7.0).all() and (out["leaf_mean"][:, leaves == 0] == 7.0).all()


def test_local_plane_follows_a_ramp_that_a_local_mean_flattens():
    import torch

    from pipeline_src.bench.oracles import local_plane
    from pipeline_src.model.mae_objective import local_visible_mean

    yy, xx = np.mgrid[0:16, 0:16].astype(float)
    x = np.stack([0.1 * yy + 0.05 * xx, -0.08 * xx + 1.0])  # (2, 16, 16): two linear bands
    visible = np.zeros((16, 16), dtype=bool)
    visible[::3, ::3] = True
    targets = ~visible
    local = local_visible_mean(torch.from_numpy(x)[None], torch.from_numpy(visible)[None], 8)[0].numpy()
    plane = local_plane(x, visible, targets, 8, local)
    assert np.abs(plane - x)[:, targets].max() < 0.25 * np.abs(local - x)[:, targets].max()
    np.testing.assert_array_equal(plane[:, visible], local[:, visible])  # only targets are predicted


def test_draws_pool_by_scored_pixels():
    from pipeline_src.bench.oracles import pool

    pooled = pool([{"pixels": 100.0, "ref_zero": 1.0}, {"pixels": 300.0, "ref_zero": 0.6}])
    assert pooled == {"pixels": 400.0, "ref_zero": (100 * 1.0 + 300 * 0.6) / 400}
