"""Scorecard assembly (same inits, pairs, every system listed) and the MAE metric helpers."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from pipeline_src.datasets.spectral import tile_mask
from pipeline_src.evaluate.mae import _Sums, pixel_mask, reconstruct_image
from pipeline_src.evaluate.metrics import cell_area_weights, decorrelation_lag
from pipeline_src.evaluate.scorecard import (check_same_inits, comparison_pairs, differences, markdown,
                                             system_rows, verdict)
from pipeline_src.evaluate.scoring import Scores
from pipeline_src.io import InputError
from pipeline_src.train.losses import mae_targets

BOOT = {"samples": 200, "block_days": 10, "level": 0.9, "seed": 0}


def _system(name, scale, inits=12, start="2015-01-01"):
    lat = -87.1875 + 5.625 * np.arange(32)
    s = Scores(name, [168, 720], ["z_500", "t2m"], ["m2 s-2", "K"], cell_area_weights(lat))
    rng = np.random.default_rng(len(name))
    times = pd.date_range(start, periods=inits, freq="5D").values
    truth = rng.normal(0, 1, (inits, 2, 2, 32, 64))
    clim = np.zeros_like(truth)
    s.add(times, truth + scale * rng.normal(0, 1, truth.shape), truth, clim)
    return s.to_dataset()


def test_scorecard_lists_every_system_with_intervals():
    systems = {"fc-tp": _system("fc-tp", 0.8), "fc-dchag": _system("fc-dchag", 0.8),
               "climatology": _system("climatology", 1.0), "persistence": _system("persistence", 1.4),
               "damped_persistence": _system("damped_persistence", 0.95)}
    models = {"fc-tp": "tp-baseline", "fc-dchag": "dchag-L"}
    pairs = comparison_pairs(models)
    assert ("fc-dchag", "fc-tp") in pairs and ("fc-tp", "climatology") in pairs and ("fc-tp", "fc-tp") not in pairs
    assert ("fc-tp", "damped_persistence") in pairs
    rows = system_rows(systems)
    diffs = differences(systems, pairs, BOOT)
    assert len(diffs) == len(pairs) * 2 * 2
    for d in diffs:
        assert d["low"] <= d["value"] <= d["high"]
    worse = [d for d in diffs if d["variant"] == "fc-tp" and d["metric"] == "rmse_minus_persistence"]
    assert all(d["high"] < 0 for d in worse)  # 0.8 vs 1.4 noise: clearly better than "persistence"
    meta = {"run_name": "t", "split": "test", "n_inits": 12, "first_init": "2015-01-01", "last_init": "2015-02-25",
            "init_stride": 5, "lead_hours": [168, 720]}
    md = markdown(rows, diffs, meta, {})
    for name in systems:
        assert f"| {name} |" in md
    assert "WeatherBench2" in md and "ClimaX" in md and "block bootstrap" in md
    assert "| fc-dchag | fc-tp | z_500 | 7 d | 10 d |" in md  # BOOT's fixed 10 days: 2 inits 5 days apart
    assert f"{len(diffs)} intervals at 90%: with no real differences about {0.1 * len(diffs):.1f}" in md
    assert "verdict (Holm)" in md
    assert "Smoke" not in md
    noted = markdown(rows, diffs, {**meta, "note": "Smoke-size run."}, {})
    assert noted.splitlines()[2] == "**Smoke-size run.**"  # right under the title


def test_bootstrap_blocks_follow_each_lead_and_holm_guards_the_verdicts():
    """block_days auto: at least the lead (7 d -> 2 inits 5 days apart, 30 d -> 6); longer where
    the paired differences stay correlated. Holm keeps a lone marginal interval from a verdict."""
    from pipeline_src.evaluate.scorecard import block_lengths

    n = 60
    systems = {"a": _system("a", 1.0, inits=n), "b": _system("b", 1.0, inits=n)}
    auto = {**BOOT, "block_days": "auto"}
    assert block_lengths(systems, [("a", "b")], auto) == {168: 2, 720: 6}
    slow = np.zeros(n)  # a difference with memory at the 7-day lead: phi 0.9 -> lag about 22
    rng = np.random.default_rng(3)
    for t in range(1, n):
        slow[t] = 0.9 * slow[t - 1] + rng.normal()
    systems["a"]["mse"].values[:, 0, 0] += 5 + slow
    blocks = block_lengths(systems, [("a", "b")], auto)
    lag = decorrelation_lag(systems["a"]["mse"].values[:, 0, 0] - systems["b"]["mse"].values[:, 0, 0])
    assert blocks[168] == lag >= 5 and blocks[720] == 6  # 60 samples underestimate phi 0.9's 22
    diffs = differences(systems, [("a", "b")], auto)
    assert {d["lead_hours"]: d["block_days"] for d in diffs} == {168: blocks[168] * 5.0, 720: 30.0}
    shifted = next(d for d in diffs if d["lead_hours"] == 168 and d["variable"] == "z_500")
    assert shifted["low"] > 0 and shifted["holm"] and verdict(shifted) == "worse"
    assert all(verdict(d) == "no significant difference" for d in diffs if d is not shifted)


def test_systems_on_different_inits_are_refused():
    a, b = _system("a", 1.0), _system("b", 1.0, start="2015-01-02")
    with pytest.raises(InputError, match="b and a were scored on different initialisation times"):
        check_same_inits({"a": a, "b": b})


def test_mae_reconstruction_layout_and_masks():
    x = torch.randn(2, 5, 8, 12)
    back = reconstruct_image(mae_targets(x, 4), 5, 4, (2, 3))
    torch.testing.assert_close(back, x)
    patch_mask = torch.tensor([[True, False, False, False, False, True]] * 2)
    pix = pixel_mask(patch_mask, 4, (2, 3))
    assert pix.shape == (2, 8, 12) and pix[0, :4, :4].all() and pix[0, 4:, 8:].all() and pix.sum() == 2 * 32
    a, b = tile_mask(0, "test", 3, 24, 0.75), tile_mask(0, "test", 3, 24, 0.75)
    assert torch.equal(a, b) and int(a.sum()) == 18
    assert not torch.equal(a, tile_mask(0, "val", 3, 24, 0.75))


def test_mae_sums_closed_forms():
    x = torch.rand(1, 6, 4, 4) + 0.1
    where = torch.zeros(1, 4, 4, dtype=torch.bool)
    where[0, :2] = True
    perfect = _Sums(6)
    perfect.add(x, x, x, x, where)
    m = perfect.metrics()
    assert m["masked_mse"] == 0 and m["sam_deg"] == pytest.approx(0, abs=1e-3) and m["plant_pixels"] == 8
    scaled = _Sums(6)
    scaled.add(x, x, x, 2 * x, where)  # same spectral shape: angle 0, error = x
    m = scaled.metrics()
    assert m["sam_deg"] == pytest.approx(0, abs=1e-3)
    want = float((x.permute(0, 2, 3, 1)[where] ** 2).mean())
    assert m["mse_reflectance"] == pytest.approx(want, rel=1e-6)
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / want), rel=1e-6)
    ortho = _Sums(2)
    a = torch.zeros(1, 2, 1, 1)
    a[0, 0] = 1.0
    b = torch.zeros(1, 2, 1, 1)
    b[0, 1] = 1.0
    ortho.add(a, b, a, b, torch.ones(1, 1, 1, dtype=torch.bool))
    assert ortho.metrics()["sam_deg"] == pytest.approx(90.0)


def test_per_init_dataset_round_trip(tmp_path):
    from pipeline_src.evaluate.scoring import read_per_init, table_rows, write_per_init

    ds = _system("x", 0.5)
    write_per_init(ds, tmp_path / "p.nc")
    back = read_per_init(tmp_path / "p.nc")
    xr.testing.assert_allclose(back, ds)
    rows = table_rows(back)
    assert {r["metric"] for r in rows} == {"rmse", "rmse_climax", "mse", "acc", "bias", "pearson", "activity"}
    assert all(r["n_inits"] == 12 and r["convention"] for r in rows)
    with pytest.raises(InputError, match="not a per-init metrics file"):
        (tmp_path / "bad.nc").write_bytes(b"junk")
        read_per_init(tmp_path / "bad.nc")
    write_per_init(ds.drop_vars(["forecast_power", "truth_power"]), tmp_path / "old.nc")
    with pytest.raises(InputError, match=r"old.nc.*no forecast_power, truth_power .*rerun"):
        read_per_init(tmp_path / "old.nc")


def test_mae_reference_images_closed_forms():
    from pipeline_src.evaluate.mae import reference_images

    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    masked = torch.tensor([[[True, False], [False, False]]] * 2)
    plants = torch.tensor([[[True, True], [False, True]], [[True, False], [False, False]]])
    refs = dict(reference_images(x, masked, plants, patch=1))
    assert torch.equal(refs["ref_zero"], torch.zeros_like(x))
    # tile 0: visible plant pixels (0, 1) and (1, 1); tile 1: none, so zero
    want0 = (x[0, :, 0, 1] + x[0, :, 1, 1]) / 2
    torch.testing.assert_close(refs["ref_visible_mean"][0, :, 1, 0], want0)
    assert float(refs["ref_visible_mean"][1].abs().sum()) == 0.0
    # within 2 patches of 1 pixel every pixel of a 2 x 2 tile is near: the local mean is the visible mean here
    torch.testing.assert_close(refs["ref_local_mean"], refs["ref_visible_mean"])


def test_mae_curves_take_what_each_training_summary_has(tmp_path):
    from pipeline_src.evaluate.stage import TARGET_LABEL, mae_curves
    from pipeline_src.io import write_json

    old = [{"step": 5, "loss": 1.0, "heldout_loss": 0.9, "heldout_ref_zero": 1.2, "heldout_ref_visible_mean": 1.1}]
    new = [{"step": 5, "loss": 1.0, "heldout_loss": 0.7, "heldout_ref_zero": 1.2, "heldout_ref_visible_mean": 1.1,
            "heldout_ref_local_mean": 0.8}]
    for name, history in (("before", old), ("after", new), ("plain", [{"step": 3, "loss": 2.0}])):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "summary.json", {"history": history})
    curves = mae_curves(tmp_path, ["before", "after", "plain"])  # a run trained before the local mean existed
    assert curves == {"before held-out": [(5, 0.9)], "predict zero": [(5, 1.2)], "predict visible mean": [(5, 1.1)],
                      TARGET_LABEL: [(5, 0.55)], "after held-out": [(5, 0.7)], "predict local mean": [(5, 0.8)],
                      "plain training": [(3, 2.0)]}
