"""Masked-autoencoder evaluation on the validation and test tiles, on plant pixels of masked patches.

Every tile gets `draws` masks, drawn from (evaluate seed + k, split, tile index) for k < draws,
the same for every variant, so two models are compared on identical problems; the metrics
pool every draw (one draw alone moves a 30-tile split's ratios by 0.1 or more).
Reconstructions are returned to reflectance with the tile stage's per-band statistics before PSNR and spectral angle:
  masked_mse       mean squared error in normalised units (the training loss's units)
  mse_reflectance  the same in reflectance; psnr = 10 log10(1 / mse_reflectance) (peak 1)
  sam_deg          mean spectral angle (degrees) between true and reconstructed spectra
All are pooled over the plant pixels of the masked patches of a split. The same metrics are
reported for the two trivial predictors (suffix _ref_zero: every masked pixel gets the
training band mean; _ref_visible_mean: the mean spectrum of the tile's visible plant
pixels; _ref_local_mean: the mean over the visible plant pixels near each pixel, see
model.mae_objective), so a reader sees at once whether the model beats them. A model trained with
norm_pix predicts each patch in its own units; its output is returned to data units with
the true patch's plant-pixel mean and deviation (oracle statistics, said in the output).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..datasets.spectral import SpectralTiles, tile_masks
from ..io import InputError, read_json
from ..model.build import ModelSpec
from ..model.tokenizer import unpatchify
from ..parallel import checkpoint as ckpt
from ..parallel.mesh import is_main
from ..model.mae_objective import LOCAL_RADIUS_PATCHES, MaeObjective, local_visible_mean
from .runtime import fresh_parallel, gather, load_parallel, progress, share, start

RGB_NM = (640.0, 550.0, 460.0)
PROBE_SEED = 12345  # the random encoder's initial weights (drawn as training draws them)
log = logging.getLogger(__name__)


@dataclass
class MaeEval:
    """One MAE checkpoint to evaluate on the tiles of some splits."""

    checkpoint: Path
    tiles: Path
    splits: tuple[str, ...] = ("val", "test")
    batch: int = 8
    seed: int = 0
    preview_tiles: int = 4
    tp: int = 1
    fsdp: int = 1
    dp: int | str = "auto"
    expected_world: int | None = None  # evaluate.nproc: refuse another number of ranks
    draws: int = 1  # masks per tile: seeds seed, seed + 1, ...


def reconstruct_image(pred: torch.Tensor, bands: int, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Decoder output (B, L, C * p * p) -> images (B, C, H, W)."""
    b, length, _ = pred.shape
    tokens = pred.reshape(b, length, bands, patch * patch).permute(0, 2, 1, 3)
    return unpatchify(tokens, patch, grid)


def pixel_mask(patch_mask: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, L) patch mask -> (B, H, W) pixel mask."""
    b, length = patch_mask.shape
    tokens = patch_mask[:, None, :, None].expand(b, 1, length, patch * patch).float()
    return unpatchify(tokens, patch, grid)[:, 0] > 0.5


class _Sums:
    """Pooled sums over plant pixels of masked patches."""

    def __init__(self, bands: int):
        self.n_pixels, self.sq_norm, self.sq_refl, self.angle = 0, 0.0, 0.0, 0.0
        self.true_sum, self.recon_sum = np.zeros(bands), np.zeros(bands)

    def add(self, x_norm, r_norm, x_refl, r_refl, where) -> None:
        """Add (B, C, H, W) tiles (normalised and reflectance) at (B, H, W) pixels `where`."""
        pick = lambda a: a.permute(0, 2, 3, 1)[where].double()  # (pixels, C)
        xn, rn, xr, rr = pick(x_norm), pick(r_norm), pick(x_refl), pick(r_refl)
        if xn.shape[0] == 0:
            return
        self.n_pixels += xn.shape[0]
        self.sq_norm += float(((xn - rn) ** 2).mean(dim=1).sum())
        self.sq_refl += float(((xr - rr) ** 2).mean(dim=1).sum())
        cos = (xr * rr).sum(1) / (xr.norm(dim=1) * rr.norm(dim=1)).clamp_min(1e-12)
        self.angle += float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).sum())
        self.true_sum += xr.sum(0).numpy()
        self.recon_sum += rr.sum(0).numpy()

    def merge(self, other: "_Sums") -> None:
        """Add another rank's sums."""
        for k in ("n_pixels", "sq_norm", "sq_refl", "angle", "true_sum", "recon_sum"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def metrics(self) -> dict[str, float]:
        """masked_mse, mse_reflectance, psnr, sam_deg, plant_pixels."""
        n = max(self.n_pixels, 1)
        mse_refl = self.sq_refl / n
        return {"masked_mse": self.sq_norm / n, "mse_reflectance": mse_refl,
                "psnr": float(10 * np.log10(1.0 / max(mse_refl, 1e-20))), "sam_deg": self.angle / n,
                "plant_pixels": float(self.n_pixels)}


def run_mae_eval(job: MaeEval) -> dict | None:
    """Evaluate on every rank; rank 0 returns {split: metrics}, mean spectra and preview images."""
    mesh, device = start(job.tp, job.fsdp, job.dp, job.expected_world)
    meta = ckpt.read_meta(job.checkpoint)
    if meta.get("spec", {}).get("task") != "mae":
        raise InputError(job.checkpoint, "not a masked-autoencoder checkpoint")
    spec = ModelSpec.from_dict(meta["spec"])
    stats = read_json(Path(job.tiles) / "stats.json")
    mean = torch.tensor(stats["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(stats["std"], dtype=torch.float32)[:, None, None]
    wl = np.asarray(stats["wavelengths"])
    model = load_parallel(job.checkpoint, spec, mesh, device)
    ratio = float(meta.get("mask_ratio", 0.75))
    objective = MaeObjective(spec.patch, norm_pix=bool(meta.get("objective", {}).get("norm_pix", False)))
    out = {"splits": {}, "wavelengths": wl.tolist(), "mask_ratio": ratio,
           "norm_pix_oracle_statistics": objective.norm_pix}
    for split in job.splits:
        tiles = SpectralTiles(Path(job.tiles) / f"{split}.zarr")
        if (tiles.bands, tiles.image) != (spec.channels, tuple(spec.image)):
            raise InputError(tiles.store, f"tiles of {tiles.bands} bands, {tiles.image[0]}x{tiles.image[1]}; "
                                          f"the checkpoint was trained on {spec.channels} bands, "
                                          f"{spec.image[0]}x{spec.image[1]}")
        sums, preview = _evaluate_split(job, model, spec, tiles, split, ratio, mean, std, mesh, device, objective)
        states = gather((sums, preview))
        if is_main():
            totals = {name: _Sums(spec.channels) for name in PREDICTORS}
            for s, p in states:
                if s is not None:
                    for name in PREDICTORS:
                        totals[name].merge(s[name])
                    preview = preview or p
            total = totals["model"]
            out["splits"][split] = total.metrics()
            for name in PREDICTORS[1:]:
                out["splits"][split].update({f"{k}_{name}": v for k, v in totals[name].metrics().items()
                                             if k != "plant_pixels"})
            out["splits"][split].update(tiles=len(tiles), mask_draws=job.draws)
            if split == job.splits[-1]:
                n = max(total.n_pixels, 1)
                out["mean_true"], out["mean_recon"] = (total.true_sum / n).tolist(), (total.recon_sum / n).tolist()
                out["preview"] = preview
    trait_probe = _trait_probe(job, model, spec, mesh, device)
    if trait_probe is not None:
        out["probe"] = trait_probe
    return out if is_main() else None


def _trait_probe(job, model, spec, mesh, device) -> dict | None:
    """The leaf-trait probe (evaluate/probe.py) on the train and test tiles, or None (with a log
    line) when the tiles carry no traits. Every rank runs the encoders; rank 0 fits."""
    import zarr

    from . import probe

    stores = {s: zarr.open_group(str(Path(job.tiles) / f"{s}.zarr"), mode="r") for s in ("train", "test")}
    if not all("traits" in g for g in stores.values()):
        if is_main():
            log.info("trait probe skipped: the tiles carry no leaf traits (user cubes without a trait raster)")
        return None
    names = list(stores["train"].attrs["traits"])
    data = {s: (g["tiles"][:], g["mask"][:].astype(bool), g["traits"][:]) for s, g in stores.items()}
    encoders = {"pretrained": model, "random": fresh_parallel(spec, mesh, device, PROBE_SEED)}
    feats = {name: {s: probe.encoder_features(m, data[s][0], device) for s in data} for name, m in encoders.items()}
    if not is_main():
        return None
    rows, targets, spectra = {}, {}, {}
    for s, (tiles, plants, traits) in data.items():
        keep, mean, _ = probe.patch_targets(traits, plants, spec.patch)
        rows[s], targets[s] = keep, mean[keep]
        spectra[s] = probe.patch_spectra(tiles, plants, spec.patch)[keep]
    features = {name: (feats[name]["train"][rows["train"]], feats[name]["test"][rows["test"]]) for name in encoders}
    features["spectrum"] = (spectra["train"], spectra["test"])
    images = np.asarray(stores["train"].attrs["images"])  # the plant of each training tile
    groups = np.unique(images, return_inverse=True)[1][np.nonzero(rows["train"])[0]]
    result = probe.probe(features, (targets["train"], targets["test"]), groups, names)
    log.info("trait probe, test R2: %s", {t: {k: round(v["r2"], 3) for k, v in r.items()} for t, r in result.items()})
    return {"traits": names, "patches": {"train": int(rows["train"].sum()), "test": int(rows["test"].sum())},
            "plants": {s: len(set(g.attrs["images"])) for s, g in stores.items()},
            "scores": result}


PREDICTORS = ("model", "ref_zero", "ref_visible_mean", "ref_local_mean")


def reference_images(x: torch.Tensor, masked: torch.Tensor, plants: torch.Tensor,
                     patch: int) -> list[tuple[str, torch.Tensor]]:
    """The reference predictors' images (B, C, H, W) in normalised units: zero (the training band
    mean), each tile's mean spectrum over its visible plant pixels (zero without any), and the
    local mean of model.mae_objective."""
    visible = (plants & ~masked).to(x.dtype)[:, None]  # (B, 1, H, W)
    spectrum = (x * visible).sum(dim=(2, 3)) / visible.sum(dim=(2, 3)).clamp_min(1.0)  # (B, C)
    local = local_visible_mean(x, plants & ~masked, LOCAL_RADIUS_PATCHES * patch)
    return [("ref_zero", torch.zeros_like(x)), ("ref_visible_mean", spectrum[:, :, None, None].expand_as(x)),
            ("ref_local_mean", local)]


def _evaluate_split(job, model, spec, tiles, split, ratio, mean, std, mesh, device, objective):
    grid, patch = spec.grid, spec.patch
    mine, passes, scoring = share(list(range(len(tiles))), mesh, job.batch)
    sums = {name: _Sums(spec.channels) for name in PREDICTORS}
    preview = []
    rgb = [int(np.argmin(np.abs(np.asarray(tiles.wavelengths) - nm))) for nm in RGB_NM]
    bar = progress(is_main(), passes * job.draws, f"{split} tiles x {job.draws} masks")
    with torch.no_grad():
        for b in range(passes):
            ids = mine[b * job.batch:(b + 1) * job.batch]
            real = bool(ids)
            ids = ids or [0]
            x = torch.stack([tiles.tile(i) for i in ids])
            plants = torch.stack([tiles.plant_mask(i) for i in ids])
            for draw in range(job.draws):
                mask = tile_masks(job.seed + draw, split, ids, grid[0] * grid[1], ratio)
                pred = model(x.to(device), mask.to(device)).float().cpu()
                if objective.norm_pix:
                    pred = objective.to_data_units(pred, x, mask, plants)
                recon = reconstruct_image(pred, spec.channels, patch, grid)
                masked = pixel_mask(mask, patch, grid)
                if real and scoring:
                    for name, guess in (("model", recon), *reference_images(x, masked, plants, patch)):
                        sums[name].add(x, guess, x * std + mean, guess * std + mean, masked & plants)
                    for k in range(len(ids) if draw == 0 else 0):  # preview tiles that show a plant
                        if len(preview) < job.preview_tiles and plants[k].float().mean() >= 0.1:
                            preview.append(_rgb_triplet(x[k], recon[k], masked[k], plants[k], mean, std, rgb))
                bar.update(1)
    bar.close()
    return (sums, preview) if scoring else (None, None)


def _rgb_triplet(x, recon, masked, plant, mean, std, rgb):
    """False-colour input, masked input (grey where masked), reconstruction with visible patches
    pasted; background (not plant) pixels black, since the tiles hold no background signal."""
    refl, rec = (x * std + mean)[rgb], (recon * std + mean)[rgb]
    scale = 1.0 / max(float(refl[:, plant].max()) if plant.any() else 1.0, 1e-6)
    back = (~plant).numpy()
    img = (refl * scale).permute(1, 2, 0).numpy()
    img[back] = 0.0
    shown = img.copy()
    shown[masked.numpy()] = 0.5
    rec_img = torch.where(masked[None], rec, refl).mul(scale).permute(1, 2, 0).numpy()
    rec_img[back] = 0.0
    return img, shown, rec_img
