"""The masked-autoencoder objective on plant pixels, and the trivial references beside it.

The tiles' background is set to 0 after normalising (hyperspectral stage), so an MSE over
whole masked patches mostly scores how often a batch holds plant pixels. Here the squared
error is averaged over the plant pixels of masked patches only (every band), so the loss
measures how well plant spectra are reconstructed. Two trivial predictors are scored on
the same pixels of the same batch:

- ref_zero: predict 0, the training band mean after normalising;
- ref_visible_mean: predict, for every masked pixel of a tile, the mean spectrum of the
  tile's visible plant pixels (0 when it has none);
- ref_local_mean: predict each masked pixel's spectrum as the mean over the visible plant
  pixels within LOCAL_RADIUS_PATCHES patches of it (the tile's visible mean where there are
  none). It is not among the trivial (constant) references the "best reference" is taken
  over, but a stronger bar beside them: a model below it does more than interpolate
  between its neighbours.

With `norm_pix` (the usual MAE option) each masked patch's target is normalised by its own
plant-pixel mean and standard deviation over all bands; the references are then scored
after the same normalisation. A batch whose masked patches hold no plant pixel has loss 0
(a zero that still back-propagates) and is counted as such in the references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tokenizer import patchify, unpatchify

LOCAL_RADIUS_PATCHES = 2


def disc_sum(values: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W): the sum of `values` over the disc of `radius` pixels around each pixel (zero outside).

    Written out as 2r + 1 horizontal runs of a prefix sum along the rows: 2r + 1 operations per
    pixel instead of a depthwise convolution's (2r + 1)**2 (8x faster at r = 8 on a CPU, where
    this runs on every training step).
    """
    r, (h, w) = radius, values.shape[-2:]
    run = F.pad(values, (r + 1, r, r, r)).cumsum(dim=-1)  # column x of the image is r + 1 here
    out = torch.zeros_like(values)
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)  # the disc's half-width on row y + dy
        rows = run[..., r + dy:r + dy + h, :]
        out += rows[..., r + 1 + half:r + 1 + half + w] - rows[..., r - half:r - half + w]
    return out


def local_visible_mean(x: torch.Tensor, visible: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W): each pixel's mean spectrum over the visible pixels (B, H, W bool) within
    `radius` pixels of it, the tile's visible mean where there are none (zero without any)."""
    seen = visible.to(x.dtype)[:, None]  # (B, 1, H, W)
    near_sum, near_count = disc_sum(x * seen, radius), disc_sum(seen, radius)
    tile = (x * seen).sum(dim=(2, 3), keepdim=True) / seen.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    return torch.where(near_count > 0.5, near_sum / near_count.clamp_min(1.0), tile)


@dataclass(frozen=True)
class MaeObjective:
    """Loss and references of one MAE configuration (see module doc)."""

    patch: int
    plant_only: bool = True
    norm_pix: bool = False
    eps: float = 1e-6

    def _layout(self, x: torch.Tensor, mask: torch.Tensor, plant: torch.Tensor | None):
        """Targets (B, L, C, P), pixel weights (B, L, P) of the scored pixels, patch plant pixels (B, L, P)."""
        target = patchify(x, self.patch).permute(0, 2, 1, 3)  # (B, L, C, P)
        b, length, _, p = target.shape
        if self.plant_only and plant is not None:
            inside = patchify(plant[:, None].to(target.dtype), self.patch)[:, 0]  # (B, L, P)
        else:
            inside = torch.ones(b, length, p, dtype=target.dtype, device=target.device)
        weight = inside * mask.to(target.dtype)[:, :, None]
        return target, weight, inside

    def _patch_stats(self, target: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's mean and deviation (sqrt(var + eps)) over its scored pixels and every band, (B, L, 1, 1)."""
        n = (inside.sum(-1) * target.shape[2]).clamp_min(1.0)[:, :, None, None]  # values per patch
        w = inside[:, :, None, :]
        mean = (target * w).sum(dim=(2, 3), keepdim=True) / n
        var = (((target - mean) ** 2) * w).sum(dim=(2, 3), keepdim=True) / n
        return mean, (var + self.eps).sqrt()

    def _normalise(self, values: torch.Tensor, target: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """values (B, L, C, P) in the target's per-patch normalisation (identity without norm_pix)."""
        if not self.norm_pix:
            return values
        mean, scale = self._patch_stats(target, inside)
        return (values - mean) / scale

    def to_data_units(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                      plant: torch.Tensor | None = None) -> torch.Tensor:
        """A norm_pix model's (B, L, C*P) output back in the tiles' units, with each true patch's
        plant-pixel mean and deviation (oracle statistics: for reconstructions and metrics)."""
        target, _, inside = self._layout(x, mask, plant)
        mean, scale = self._patch_stats(target, inside)
        return (pred.reshape(target.shape) * scale + mean).reshape(pred.shape)

    @staticmethod
    def _sum(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (((pred - target) ** 2).mean(dim=2) * weight).sum()  # band-mean squared error, weighted pixels

    def loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
             plant: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error over (plant pixels of) masked patches; pred is the decoder's (B, L, C*P)."""
        target, weight, inside = self._layout(x, mask, plant)
        b, length, c, p = target.shape
        goal = self._normalise(target, target, inside)
        return self._sum(pred.reshape(b, length, c, p), goal, weight) / weight.sum().clamp_min(1.0)

    def sums(self, pred: torch.Tensor | None, x: torch.Tensor, mask: torch.Tensor,
             plant: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Summed squared errors of the model (given pred) and of the trivial predictors, and the
        number of scored pixels: pool them over batches, divide by 'pixels' at the end."""
        with torch.no_grad():
            target, weight, inside = self._layout(x, mask, plant)
            visible = inside * (~mask).to(target.dtype)[:, :, None]  # (B, L, P)
            count = visible.sum(dim=(1, 2)).clamp_min(1.0)  # (B,)
            spectrum = (target * visible[:, :, None, :]).sum(dim=(1, 3)) / count[:, None]  # (B, C)
            goal = self._normalise(target, target, inside)
            grid = (x.shape[2] // self.patch, x.shape[3] // self.patch)
            seen = unpatchify(visible[:, None], self.patch, grid)[:, 0] > 0  # (B, H, W)
            local = local_visible_mean(x, seen, LOCAL_RADIUS_PATCHES * self.patch)
            local = patchify(local, self.patch).permute(0, 2, 1, 3)  # (B, L, C, P)
            out = {"pixels": weight.sum(),
                   "ref_zero": self._sum(self._normalise(torch.zeros_like(target), target, inside), goal, weight),
                   "ref_visible_mean": self._sum(self._normalise(spectrum[:, None, :, None].expand_as(target),
                                                                 target, inside), goal, weight),
                   "ref_local_mean": self._sum(self._normalise(local, target, inside), goal, weight)}
            if pred is not None:
                out["loss"] = self._sum(pred.detach().reshape(target.shape), goal, weight)
            return out

    def references(self, x: torch.Tensor, mask: torch.Tensor, plant: torch.Tensor | None = None) -> dict:
        """The trivial predictors' losses on the same pixels as the loss: {'ref_zero', 'ref_visible_mean', 'ref_local_mean'}."""
        s = self.sums(None, x, mask, plant)
        return {k: s[k] / s["pixels"].clamp_min(1.0) for k in REFERENCES}


REFERENCES = ("ref_zero", "ref_visible_mean", "ref_local_mean")
TRIVIAL = ("ref_zero", "ref_visible_mean")  # the constant predictors the "best trivial reference" is taken over
