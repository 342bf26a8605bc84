"""The masked autoencoder's side of training: plant-pixel loss with its trivial references on
every batch, and a held-out curve on fixed masks of the validation tiles (`heldout_draws` masks
per tile, seeds seed, seed + 1, ...: the evaluation stage's val masks when the seeds agree)."""

from __future__ import annotations

import torch

from ..datasets.spectral import SpectralTiles, tile_masks
from ..model.mae_objective import REFERENCES, TRIVIAL, MaeObjective

HELDOUT_KEYS = ("heldout_loss", "heldout_ref_zero", "heldout_ref_visible_mean", "heldout_ref_local_mean")


class MaeTraining:
    """Loss, references and held-out scoring of one MAE run (its MaeData holds the settings)."""

    def __init__(self, data, patch: int):
        self.objective = MaeObjective(patch, plant_only=data.loss == "plant", norm_pix=bool(data.norm_pix))
        self.mask_ratio = data.mask_ratio
        self.seed = data.seed
        self.every = int(data.heldout_every)
        self.draws = int(data.heldout_draws)
        store = data.heldout_store
        self.heldout = SpectralTiles(store) if store and self.every else None

    def loss(self, model, batch, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the REFERENCES' losses) on this rank's micro-batch."""
        x, mask = batch.x.to(device), batch.mask.to(device)
        plant = batch.plant.to(device) if batch.plant is not None else None
        with autocast():
            pred = model(x, mask)
        loss = self.objective.loss(pred.float(), x, mask, plant)
        refs = self.objective.references(x, mask, plant)
        return loss, torch.stack([refs[k] for k in REFERENCES])

    def due(self, done: int, total: int) -> bool:
        """True at the steps that score the held-out tiles (every `heldout_every`, and the last)."""
        return self.heldout is not None and (done % self.every == 0 or done == total)

    def score_heldout(self, model, spec, device, autocast, batch: int = 8) -> dict[str, float]:
        """Pooled plant-pixel loss of the model and the references on every held-out tile under
        each of its `heldout_draws` masks.

        Every rank scores every tile (the held-out split is small), so tensor-parallel peers
        run the same forward and no reduction is needed.
        """
        tiles = self.heldout
        grid = spec.grid
        totals: dict[str, float] = {}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for lo in range(0, len(tiles), batch):
                ids = range(lo, min(len(tiles), lo + batch))
                x = torch.stack([tiles.tile(i) for i in ids]).to(device)
                plant = torch.stack([tiles.plant_mask(i) for i in ids]).to(device)
                for draw in range(self.draws):
                    mask = tile_masks(self.seed + draw, "val", ids, grid[0] * grid[1], self.mask_ratio).to(device)
                    with autocast():
                        pred = model(x, mask)
                    for k, v in self.objective.sums(pred.float(), x, mask, plant).items():
                        totals[k] = totals.get(k, 0.0) + float(v)
        model.train(was_training)
        n = max(totals["pixels"], 1.0)
        return {"heldout_loss": totals["loss"] / n, "heldout_ref_zero": totals["ref_zero"] / n,
                "heldout_ref_visible_mean": totals["ref_visible_mean"] / n,
                "heldout_ref_local_mean": totals["ref_local_mean"] / n, "heldout_pixels": totals["pixels"]}


def heldout_verdict(record: dict) -> dict:
    """A held-out record's losses with the model's ratios to the best trivial (constant) reference
    (below 0.5: at most half of it) and to the local mean; a ratio is None when its reference is 0."""
    best = min(record[f"heldout_{k}"] for k in TRIVIAL)
    local = record["heldout_ref_local_mean"]
    return {**{k: record[k] for k in ("step", *HELDOUT_KEYS)},
            "loss_over_best_reference": record["heldout_loss"] / best if best > 0 else None,
            "loss_over_local_mean": record["heldout_loss"] / local if local > 0 else None}
