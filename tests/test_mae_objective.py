"""The MAE plant-pixel objective: closed forms of the loss and the trivial references on
hand-built batches, batches without plants, and a short seeded training that learns."""

from __future__ import annotations

import pytest
import torch

from pipeline_src.datasets.spectral import (Augment, SyntheticSpectralTiles, mae_batch, plant_covariance_root,
                                           sampling_weights)
from pipeline_src.model.arch import random_mask
from pipeline_src.model.build import ModelSpec, build_model
from pipeline_src.train.losses import mae_targets
from pipeline_src.model.mae_objective import MaeObjective


def _batch():
    """One 2-band 4x8 tile, patch 4 (two patches): patch 0 visible, patch 1 masked."""
    x = torch.zeros(1, 2, 4, 8)
    x[0, 0, :, :4], x[0, 1, :, :4] = 1.0, 3.0      # visible patch: spectrum (1, 3)
    x[0, 0, :, 4:], x[0, 1, :, 4:] = 2.0, -2.0     # masked patch: spectrum (2, -2)
    x[0, :, 0, 4] = torch.tensor([6.0, 0.0])       # one masked pixel with another spectrum
    mask = torch.tensor([[False, True]])
    plant = torch.zeros(1, 4, 8, dtype=torch.bool)
    plant[0, :2, :] = True                          # top two rows are plant: 8 pixels per patch
    plant[0, 0, 0] = False                          # one visible pixel is background
    return x, mask, plant


def test_references_equal_their_closed_forms():
    x, mask, plant = _batch()
    obj = MaeObjective(4)
    refs = obj.references(x, mask, plant)
    # masked plant pixels: 8, one of them (6, 0), seven (2, -2)
    zero = (7 * (4 + 4) / 2 + (36 + 0) / 2) / 8
    assert refs["ref_zero"].item() == pytest.approx(zero)
    # visible plant pixels: 7, all (1, 3); their mean spectrum predicted for every masked plant pixel
    visible = (7 * ((2 - 1) ** 2 + (-2 - 3) ** 2) / 2 + ((6 - 1) ** 2 + (0 - 3) ** 2) / 2) / 8
    assert refs["ref_visible_mean"].item() == pytest.approx(visible)
    # every visible plant pixel is within 2 patches (8 pixels) of every masked one: local = visible mean here
    assert refs["ref_local_mean"].item() == pytest.approx(visible)
    perfect = mae_targets(x, 4)
    assert obj.loss(perfect, x, mask, plant).item() == 0.0
    off = perfect.clone()
    off[0, 1] += 0.5  # every value of the masked patch off by 0.5: background ones must not count more
    assert obj.loss(off, x, mask, plant).item() == pytest.approx(0.25)


def test_background_and_visible_patches_do_not_count():
    x, mask, plant = _batch()
    pred = mae_targets(x, 4).clone()
    pred[0, 0] += 100.0                 # the visible patch
    pred[0, 1].view(2, 16)[:, 8:] += 100.0  # background rows of the masked patch
    assert MaeObjective(4).loss(pred, x, mask, plant).item() == 0.0
    assert MaeObjective(4, plant_only=False).loss(pred, x, mask, plant).item() > 1000


def test_a_batch_without_plant_pixels_scores_zero_and_still_backpropagates():
    x, mask, _ = _batch()
    pred = torch.randn(1, 2, 32, requires_grad=True)
    none = torch.zeros(1, 4, 8, dtype=torch.bool)
    obj = MaeObjective(4)
    loss = obj.loss(pred, x, mask, none)
    assert loss.item() == 0.0 and obj.references(x, mask, none) == {"ref_zero": 0.0, "ref_visible_mean": 0.0,
                                                                  "ref_local_mean": 0.0}
    loss.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) == 0.0


def test_norm_pix_scores_targets_in_patch_units():
    x, mask, plant = _batch()
    obj = MaeObjective(4, norm_pix=True)
    # masked plant values: 7 pixels (2, -2) and one (6, 0); mean 6/16 + ... over 16 values
    values = torch.tensor([2.0, -2.0] * 7 + [6.0, 0.0])
    mean, var = values.mean(), values.var(unbiased=False)
    assert obj.references(x, mask, plant)["ref_zero"].item() == pytest.approx((mean**2 / var).item() + 1.0, rel=1e-4)
    # the model's output is compared in patch units: predicting the normalised target scores 0
    target = (mae_targets(x, 4).reshape(1, 2, 2, 16) - mean) / (var + obj.eps).sqrt()
    assert obj.loss(target.reshape(1, 2, 32), x, mask, plant).item() == pytest.approx(0.0, abs=1e-9)


def test_plant_weighted_sampling_never_draws_bare_tiles():
    frac = torch.tensor([0.0, 0.5, 0.0, 0.25])
    seen = set()
    for step in range(20):
        b = mae_batch(lambda i: torch.full((2, 8, 8), float(i)), 4, (8, 8), 0, step, 0, 4, slice(0, 4), 0.5, 4,
                      plant=lambda i: torch.ones(8, 8, dtype=torch.bool), weights=sampling_weights(frac, "plant"))
        seen |= {int(v) for v in b.x[:, 0, 0, 0]}
        assert b.plant.shape == (4, 8, 8)
    assert seen == {1, 3}
    assert sampling_weights(frac, "uniform") is None
    with pytest.raises(ValueError, match="no tile holds plant pixels"):
        sampling_weights(torch.zeros(3), "plant")


def test_flips_move_the_tile_and_its_plant_pixels_together():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    plant = x[0] > 7
    aug = Augment(flips=True)
    seen = set()
    for sym in range(8):
        y, p = aug.apply(x, plant, sym, torch.zeros(2), None)
        assert torch.equal(p, y[0] > 7)  # the mask follows the pixels
        assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
        seen.add(tuple(y[0].flatten().tolist()))
    assert len(seen) == 8  # the 8 symmetries of a square are all different
    wide = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(2, 4, 8)
    shapes = {aug.apply(wide, None, sym, torch.zeros(2), None)[0].shape for sym in range(8)}
    assert shapes == {(2, 4, 8)}  # a non-square tile is only flipped


def test_spectral_shift_adds_one_spectrum_to_the_plant_pixels_only():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(500, 3, generator=g) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 0.3]])
    tile = pixels.T.reshape(3, 20, 25)
    root = plant_covariance_root(lambda i: tile, lambda i: torch.ones(20, 25, dtype=torch.bool), 1)
    torch.testing.assert_close(root @ root.T, torch.cov(pixels.T), rtol=1e-4, atol=1e-5)
    plant = torch.zeros(20, 25, dtype=torch.bool)
    plant[5:9, 3:7] = True
    z = torch.tensor([1.0, -2.0, 0.5])
    y, p = Augment(shift=0.5).apply(tile, plant, 0, z, root)
    diff = y - tile
    torch.testing.assert_close(diff[:, plant], (0.5 * root @ z)[:, None].expand(3, 16))
    assert torch.equal(diff[:, ~plant], torch.zeros(3, int((~plant).sum())))
    assert torch.equal(p, plant)


def test_augmented_batches_are_the_same_on_every_rank_and_on_resume():
    tiles = SyntheticSpectralTiles(bands=4, image=(8, 8), seed=0)
    aug = Augment(flips=True, shift=0.3)
    whole = tiles.batch(0, 5, 1, 4, slice(0, 4), 0.5, 4, augment=aug)
    halves = [tiles.batch(0, 5, 1, 4, rows, 0.5, 4, augment=aug) for rows in (slice(0, 2), slice(2, 4))]
    assert torch.equal(torch.cat([h.x for h in halves]), whole.x)
    assert torch.equal(torch.cat([h.plant for h in halves]), whole.plant)
    plain = tiles.batch(0, 5, 1, 4, slice(0, 4), 0.5, 4)
    assert torch.equal(plain.mask, whole.mask) and not torch.equal(plain.x, whole.x)
    assert torch.equal(tiles.batch(0, 5, 1, 4, slice(0, 4), 0.5, 4, augment=aug).x, whole.x)


@pytest.mark.timeout(120)
def test_short_training_learns_plant_spectra():
    """On one fixed batch of synthetic tiles, 150 Adam steps of a tiny MAE bring the masked
    plant loss far below predicting zero (a real learning test: small and seeded)."""
    torch.manual_seed(0)
    data = SyntheticSpectralTiles(bands=16, image=(16, 16), seed=3)
    batch = data.batch(seed=1, step=0, micro=0, global_batch=8, rows=slice(0, 8), mask_ratio=0.5, patch=4)
    assert batch.plant.any()
    spec = ModelSpec(arch="tp-baseline", task="mae", channels=16, image=(16, 16), patch=4, dim=32, depth=2,
                     heads=2, agg_heads=2, mlp_ratio=2.0)
    model = build_model(spec, seed=0)
    obj = MaeObjective(4)
    zero = obj.references(batch.x, batch.mask, batch.plant)["ref_zero"].item()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = obj.loss(model(batch.x, batch.mask), batch.x, batch.mask, batch.plant)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = obj.loss(model(batch.x, batch.mask), batch.x, batch.mask, batch.plant).item()
    assert final < 0.1 * zero, (final, zero)


def _copy_batch(g: torch.Generator, n: int, bands: int):
    """Tiles whose plant pixels (a random disc) all hold one random spectrum, new every call."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centre = 4 + 8 * torch.rand(n, 2, generator=g)
    plant = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2 < 25.0
    spectra = torch.randn(n, bands, 1, 1, generator=g)
    x = torch.where(plant[:, None], spectra + 0.05 * torch.randn(n, bands, 16, 16, generator=g), 0.0)
    return x, plant, random_mask(n, 16, 0.75, g)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch", ["tp-baseline", "dchag-L"])
def test_the_mae_learns_to_copy_spectra_from_the_visible_patches(arch):
    """Every batch is new and its spectra random: only reading the visible patches lowers the loss
    below the zero reference. Over the last 50 of 200 steps this reaches 0.42 of it; without the
    LayerNorm after the front end (content then 1e-3 of the position codes) it stayed at 0.60."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, task="mae", channels=4, image=(16, 16), patch=4, dim=32, depth=2,
                     heads=2, agg_heads=2, mlp_ratio=2.0, partitions=2)
    model = build_model(spec, seed=0)
    obj = MaeObjective(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, zeros = [], []
    for _ in range(200):
        x, plant, mask = _copy_batch(g, 16, 4)
        loss = obj.loss(model(x, mask), x, mask, plant)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        zeros.append(obj.references(x, mask, plant)["ref_zero"].item())
    ratio = sum(losses[-50:]) / sum(zeros[-50:])
    assert ratio < 0.5, ratio


def _tile_store(path, tiles: torch.Tensor, plants: torch.Tensor):
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("tiles", data=tiles.numpy(), chunks=(1, *tiles.shape[1:]))
    root.create_array("mask", data=plants.numpy().astype("uint8"), chunks=plants.shape)
    root.create_array("wavelength", data=torch.linspace(400, 900, tiles.shape[1]).double().numpy())
    return path


@pytest.mark.timeout(120)
def test_training_logs_references_and_a_heldout_curve(tmp_path, monkeypatch):
    import torch.distributed as dist

    from pipeline_src.parallel.spawn import free_port
    from pipeline_src.train.loop import TrainJob, run_training
    from pipeline_src.train.settings import MaeData, ModelSettings, train_sections

    # one process in this pytest process: a free port, and no process group or MASTER_* left
    # behind (later tests launch ranks that would inherit them)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))

    data = SyntheticSpectralTiles(bands=8, image=(16, 16), seed=5)
    for split, first in (("train", 0), ("val", 100)):
        ids = range(first, first + 6)
        plants = torch.stack([data.plant_mask(i) for i in ids])
        plants[0] = False  # a bare tile: never drawn with plant sampling
        _tile_store(tmp_path / f"{split}.zarr", torch.stack([data.tile(i) for i in ids]), plants)
    model = ModelSettings(arch="tp-baseline", dim=16, depth=1, heads=2, agg_heads=2, mlp_ratio=2.0, patch=4,
                          partitions=1)
    job_data = MaeData(source="hyperspectral", bands=8, image=(16, 16), mask_ratio=0.75, seed=0, loss="plant",
                       sampling="plant", heldout_every=2, store=str(tmp_path / "train.zarr"),
                       heldout_store=str(tmp_path / "val.zarr"))
    out = tmp_path / "run"
    job = TrainJob("m", "mae", model, data=job_data, run_dir=out, final_dir=out / "final",
                   summary_path=out / "summary.json", plot_path=out / "loss.png",
                   **train_sections(steps=5, micro_batch=2, log_every=5, checkpoint_every=0))
    try:
        summary = run_training(job)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    history = summary["history"]
    assert all(h["ref_zero"] > 0 and h["ref_visible_mean"] > 0 and h["ref_local_mean"] > 0 for h in history)
    assert [h["step"] for h in history if "heldout_loss" in h] == [2, 4, 5]
    verdict = summary["heldout"]
    assert verdict["step"] == 5 and verdict["loss_over_best_reference"] == pytest.approx(
        verdict["heldout_loss"] / min(verdict["heldout_ref_zero"], verdict["heldout_ref_visible_mean"]))
    assert verdict["loss_over_local_mean"] == pytest.approx(verdict["heldout_loss"] / verdict["heldout_ref_local_mean"])
    assert (out / "loss.png").stat().st_size > 1000


def test_heldout_curve_pools_its_mask_draws(tmp_path):
    """heldout_draws masks per tile (seeds seed, seed + 1, ...) pool as the pixel-weighted mean of
    the single draws: the same sums the evaluation stage pools over its draws."""
    from contextlib import nullcontext

    from pipeline_src.train.mae import HELDOUT_KEYS, MaeTraining
    from pipeline_src.train.settings import MaeData

    data = SyntheticSpectralTiles(bands=8, image=(16, 16), seed=5)
    ids = range(100, 106)
    store = _tile_store(tmp_path / "val.zarr", torch.stack([data.tile(i) for i in ids]),
                        torch.stack([data.plant_mask(i) for i in ids]))
    spec = ModelSpec(arch="tp-baseline", task="mae", channels=8, image=(16, 16), patch=4, dim=16, depth=1,
                     heads=2, agg_heads=2, mlp_ratio=2.0)
    model = build_model(spec, seed=0)
    def score(seed, draws):
        data = MaeData(mask_ratio=0.75, heldout_every=1, heldout_store=str(store), seed=seed, heldout_draws=draws)
        training = MaeTraining(data, spec.patch)
        return training.score_heldout(model, spec, torch.device("cpu"), nullcontext, batch=4)

    singles, pooled = [score(3, 1), score(4, 1)], score(3, 2)
    assert singles[0]["heldout_loss"] != pytest.approx(singles[1]["heldout_loss"], rel=1e-3)  # other masks
    pixels = [s["heldout_pixels"] for s in singles]
    assert pooled["heldout_pixels"] == sum(pixels)
    for key in HELDOUT_KEYS:
        expected = sum(s[key] * n for s, n in zip(singles, pixels)) / sum(pixels)
        assert pooled[key] == pytest.approx(expected, rel=1e-5), key


def test_distance_bias_is_minus_slope_times_patch_distance_and_splits_by_head():
    from pipeline_src.model.vit import DistanceBias

    bias = DistanceBias((2.0, 0.5, 0.0, 1.0), grid=(2, 3))
    full = bias()
    assert full.shape == (4, 6, 6)
    # patches 0 = (0, 0), 5 = (1, 2): distance sqrt(5); 1 = (0, 1), 3 = (1, 0): sqrt(2)
    assert full[0, 0, 5].item() == pytest.approx(-2.0 * 5 ** 0.5)
    assert full[1, 1, 3].item() == pytest.approx(-0.5 * 2 ** 0.5)
    assert torch.equal(full[2], torch.zeros(6, 6)) and torch.equal(full.diagonal(dim1=1, dim2=2), torch.zeros(4, 6))
    bias.keep_heads(range(2, 4))  # what tensor parallelism keeps on the second of two ranks
    assert torch.equal(bias(), full[2:])


def _decoder_outputs(slopes, x, mask):
    spec = ModelSpec(arch="tp-baseline", task="mae", channels=3, image=(16, 16), patch=4, dim=16, depth=1,
                     heads=2, agg_heads=2, mlp_ratio=2.0, decoder_slopes=slopes)
    return build_model(spec, seed=0)(x, mask)


def test_decoder_slopes_make_masked_patches_read_their_neighbourhood():
    """With steep slopes every decoder head attends to the patch itself: a masked patch's output no
    longer depends on the visible patches at all; with zero slopes it does."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 16, 16, generator=g)
    mask = random_mask(1, 16, 0.5, g)
    changed = x.clone()
    changed[:, :, :4, :4] += 5.0  # patch 0
    if mask[0, 0]:
        mask = ~mask  # patch 0 visible
    for slopes, moves in (((1e4, 1e4), False), ((0.0, 0.0), True)):
        before, after = _decoder_outputs(slopes, x, mask), _decoder_outputs(slopes, changed, mask)
        delta = (after - before)[0, mask[0]].abs().max().item()
        assert (delta > 1e-3) == moves, (slopes, delta)


def test_decoder_slopes_are_checked_and_keep_old_fingerprints():
    base = dict(arch="tp-baseline", task="mae", channels=3, image=(16, 16), patch=4, dim=16, depth=1, heads=2,
                agg_heads=2)
    with pytest.raises(ValueError, match=r"decoder_slopes \[1.0\] needs one slope >= 0 for each of the 2 heads"):
        build_model(ModelSpec(**base, decoder_slopes=(1.0,)))
    with pytest.raises(ValueError, match="needs one slope >= 0"):
        build_model(ModelSpec(**base, decoder_slopes=(1.0, -1.0)))
    plain, sloped = ModelSpec(**base), ModelSpec(**base, decoder_slopes=(1.0, 0.0))
    assert plain.fingerprint() == "b4c11f2ae8af0be7"  # as before the field existed: older checkpoints load
    assert sloped.fingerprint() != plain.fingerprint() and ModelSpec.from_dict(sloped.to_dict()) == sloped


def test_local_mean_reads_the_visible_pixels_near_each_pixel():
    from pipeline_src.model.mae_objective import local_visible_mean

    x = torch.tensor([10.0, 0, 0, 0, 0, 0, 20]).reshape(1, 1, 1, 7).repeat(1, 2, 1, 1)
    x[:, 1] *= -1  # a second band
    visible = torch.tensor([[[True, False, False, False, False, False, True]]])
    local = local_visible_mean(x, visible, radius=2)
    # pixel 1 sees only pixel 0; pixel 3 sees neither (3 away), so it gets the tile mean; pixel 5 sees pixel 6
    assert local[0, 0].tolist() == [[10.0, 10.0, 10.0, 15.0, 20.0, 20.0, 20.0]]
    assert torch.equal(local[0, 1], -local[0, 0])
    assert torch.equal(local_visible_mean(x, torch.zeros_like(visible), radius=2), torch.zeros_like(x))


def test_disc_sum_equals_a_convolution_with_the_disc():
    import torch.nn.functional as F

    from pipeline_src.model.mae_objective import disc_sum

    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 13, 17, generator=g, dtype=torch.float64)
    for radius in (1, 2, 5, 8):
        offsets = torch.arange(-radius, radius + 1)
        disc = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius ** 2).double()
        conv = F.conv2d(values, disc.expand(3, 1, -1, -1), padding=radius, groups=3)
        torch.testing.assert_close(disc_sum(values, radius), conv)
