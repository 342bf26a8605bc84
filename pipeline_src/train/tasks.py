"""What differs between training tasks, so the training loop has no task branches.

A task owns its data, the data-dependent part of the model spec, what the checkpoint must
remember for evaluation, its MLflow parameters, how a rank fetches its micro-batches, the
loss (and the references logged beside it), the held-out scoring and its summary.
"""

from __future__ import annotations

import torch

from ..datasets.era5 import ERA5Forecast
from ..datasets.spectral import Augment, SpectralTiles, SyntheticSpectralTiles
from ..model.mae_objective import REFERENCES
from .losses import forecast_loss, latitude_weights
from .mae import MaeTraining, heldout_verdict


class ForecastTask:
    """Lead-time forecasting on the assembled ERA5 training split (latitude-weighted MSE)."""

    extras: tuple[str, ...] = ()  # nothing logged beside the loss

    def __init__(self, job):
        self.job = job
        d = job.data
        self.data = ERA5Forecast(d.assembled, "train", list(d.targets), list(d.lead_days), d.space,
                                 cache_bytes=job.runtime.data_cache_mb * 2**20)
        self.lat_w = None

    def spec_fields(self) -> dict:
        """The model settings the data decides: channels, grid and outputs."""
        d = self.data
        return dict(channels=len(d.channels), image=d.image, outputs=len(d.targets), channel_names=tuple(d.channels))

    def meta(self) -> dict:
        """What evaluation needs from the checkpoint: the transform it must undo, the leads."""
        return {"transform": self.data.transform.to_dict(), "lead_days": self.data.lead_days}

    def params(self) -> dict:
        """MLflow parameters beyond the model and optimisation settings."""
        return {}

    def prepare(self, spec, input_span: tuple[int, int] | None, device: torch.device) -> None:
        """Read only this rank's input channels (a D-CHAG rank's partitions) and the targets."""
        self.channels = slice(*input_span) if input_span is not None and input_span != (0, spec.channels) else None
        self.data.use_inputs(self.channels)
        self.lat_w = latitude_weights(self.data.latitudes).to(device)

    def fetcher(self, seed: int, global_batch: int, rows: slice):
        """fetch(step, micro) -> this rank's micro-batch (picklable for the loader's workers)."""
        return _ForecastFetch(self.data, seed, global_batch, rows, self.channels)

    def loss(self, model, batch, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """(latitude-weighted MSE in the transform's space, no extras)."""
        with autocast():
            pred = model(batch.x.to(device), batch.lead_days.to(device))
        return forecast_loss(pred.float(), batch.y.to(device), self.lat_w), torch.zeros(0, device=device)

    def heldout(self, model, spec, device, autocast, done: int, steps: int) -> dict | None:
        """No held-out scoring during forecast training (the evaluation stage scores the test year)."""
        return None

    def summary(self, history: list[dict]) -> dict:
        """Task-specific entries of summary.json."""
        return {}

    def close(self) -> None:
        """Release the stores."""
        self.data.close()


class _ForecastFetch:
    def __init__(self, data, seed, global_batch, rows, channels):
        self.data, self.seed, self.global_batch, self.rows, self.channels = data, seed, global_batch, rows, channels

    def __call__(self, step: int, micro: int):
        return self.data.batch(self.seed, step, micro, self.global_batch, self.rows, self.channels)


class MaeTask:
    """Masked-autoencoder pretraining on spectral tiles: plant-pixel loss, references, held-out curve."""

    extras: tuple[str, ...] = REFERENCES  # the trivial references' losses on every batch

    def __init__(self, job):
        self.job = job
        d = job.data
        self.data = SpectralTiles(d.store) if d.source == "hyperspectral" else \
            SyntheticSpectralTiles(d.bands, d.image, d.seed)
        self.augment = Augment.from_config(d.augment)
        self.training: MaeTraining | None = None

    def spec_fields(self) -> dict:
        """The model settings the data decides: bands and tile size; the decoder's distance slopes."""
        return dict(channels=self.data.bands, image=self.data.image, decoder_slopes=self.job.model.decoder_slopes)

    def meta(self) -> dict:
        """What evaluation needs from the checkpoint: the mask ratio and the objective."""
        d = self.job.data
        return {"mask_ratio": d.mask_ratio, "objective": {"loss": d.loss, "norm_pix": bool(d.norm_pix)}}

    def params(self) -> dict:
        """The objective and data choices of the MAE."""
        d = self.job.data
        choices = ("mask_ratio", "loss", "norm_pix", "sampling", "heldout_draws")
        return {**{f"mae.{k}": getattr(d, k) for k in choices},
                "mae.augment.flips": self.augment.flips, "mae.augment.shift": self.augment.shift}

    def prepare(self, spec, input_span, device) -> None:
        """Every rank reads every band: the targets are all bands of the masked patches."""
        self.patch = spec.patch
        self.training = MaeTraining(self.job.data, spec.patch)

    def fetcher(self, seed: int, global_batch: int, rows: slice):
        """fetch(step, micro) -> this rank's micro-batch (picklable for the loader's workers)."""
        d = self.job.data
        return _MaeFetch(self.data, seed, global_batch, rows, d.mask_ratio, self.patch, d.sampling, self.augment)

    def loss(self, model, batch, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked plant-pixel loss, the references' losses on the same pixels)."""
        return self.training.loss(model, batch, device, autocast)

    def heldout(self, model, spec, device, autocast, done: int, steps: int) -> dict | None:
        """The held-out curve's point at this step, when one is due."""
        if not self.training.due(done, steps):
            return None
        return self.training.score_heldout(model, spec, device, autocast)

    def summary(self, history: list[dict]) -> dict:
        """The held-out verdict: the last point against the best trivial reference and the local mean."""
        scored = [h for h in history if "heldout_loss" in h]
        return {"heldout": heldout_verdict(scored[-1])} if scored else {}

    def close(self) -> None:
        """Release the stores."""
        if hasattr(self.data, "close"):
            self.data.close()


class _MaeFetch:
    def __init__(self, data, seed, global_batch, rows, mask_ratio, patch, sampling, augment):
        self.data, self.seed, self.global_batch, self.rows = data, seed, global_batch, rows
        self.mask_ratio, self.patch, self.sampling, self.augment = mask_ratio, patch, sampling, augment

    def __call__(self, step: int, micro: int):
        return self.data.batch(self.seed, step, micro, self.global_batch, self.rows, self.mask_ratio, self.patch,
                               self.sampling, self.augment)


TASKS = {"forecast": ForecastTask, "mae": MaeTask}
