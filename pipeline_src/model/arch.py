"""The two top-level models: a lead-time forecaster and a masked autoencoder.

Both are front end (baseline or D-CHAG) -> LayerNorm -> position embedding -> ViT backbone -> head.

The front end's aggregated tokens are averages over many channel tokens, far smaller than
the unit-scale position codes (about 1e-3 of them at initialisation, measured on the
hyperspectral tiles): without the LayerNorm the backbone starts out seeing only positions.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import ForecastHead, MAEDecoder
from .vit import Backbone, sincos_2d


class LeadEmbedding(nn.Linear):
    """Lead time (B, 1) in units of the lead scale -> a (B, dim) code added to every token.

    Initialised for its fan-in of one (weights of unit variance), so that the code is on the
    tokens' unit scale from the start: with the small weights of the wide layers (std 0.02) it
    was a fiftieth of the tokens, and the default's forecasters, a hundred steps long, put out
    anomalies of one amplitude at every lead (too damped at 7 days, too strong at 30).
    """

    def __init__(self, dim: int):
        super().__init__(1, dim)

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Weights N(0, 1) (fan-in 1), bias 0."""
        if name == "weight":
            nn.init.normal_(tensor, std=1.0, generator=generator)
        else:
            nn.init.zeros_(tensor)


class Forecaster(nn.Module):
    """All input channels at t (B, C, H, W) and lead time in days (B,) -> targets at t + lead (B, V, H, W)."""

    def __init__(self, front: nn.Module, grid: tuple[int, int], dim: int, depth: int, heads: int,
                 mlp_ratio: float, outputs: int, patch: int, lead_scale_days: float = 30.0):
        super().__init__()
        self.front = front
        self.front_norm = nn.LayerNorm(dim)
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.empty(1, grid[0] * grid[1], dim))
        self.lead_embed = LeadEmbedding(dim)
        self.lead_scale_days = lead_scale_days
        self.backbone = Backbone(dim, depth, heads, mlp_ratio)
        self.head = ForecastHead(dim, outputs, patch, grid)

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Position embeddings start as the fixed 2-D sine-cosine codes."""
        tensor.copy_(sincos_2d(tensor.shape[-1], self.grid)[None])

    def forward(self, x: torch.Tensor, lead_days: torch.Tensor) -> torch.Tensor:
        tokens = self.front_norm(self.front(x)) + self.pos_embed
        lead = self.lead_embed((lead_days.to(tokens.dtype) / self.lead_scale_days)[:, None])
        tokens = tokens + lead[:, None, :]
        return self.head(self.backbone(tokens))


class MaskedAutoencoder(nn.Module):
    """Masked autoencoding after aggregation: (B, C, H, W), mask (B, L) -> (B, L, C * patch**2).

    The mask is chosen by the caller (see random_mask) so every TP rank can use the same one.
    """

    def __init__(self, front: nn.Module, grid: tuple[int, int], dim: int, depth: int, heads: int,
                 mlp_ratio: float, channels: int, patch: int, decoder_depth: int,
                 decoder_slopes: tuple[float, ...] = ()):
        super().__init__()
        self.front = front
        self.front_norm = nn.LayerNorm(dim)
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.empty(1, grid[0] * grid[1], dim))
        self.backbone = Backbone(dim, depth, heads, mlp_ratio)
        self.decoder = MAEDecoder(dim, decoder_depth, heads, mlp_ratio, channels, patch, grid, decoder_slopes)

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Position embeddings start as the fixed 2-D sine-cosine codes."""
        tensor.copy_(sincos_2d(tensor.shape[-1], self.grid)[None])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = self.front_norm(self.front(x)) + self.pos_embed
        b, _, dim = tokens.shape
        visible = tokens[~mask].reshape(b, -1, dim)
        return self.decoder(self.backbone(visible), mask)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output token of every patch, none masked: (B, L, dim) features for probes."""
        return self.backbone(self.front_norm(self.front(x)) + self.pos_embed)


def random_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A (batch, num_patches) bool mask with round(ratio * num_patches) True (masked) per row."""
    n_masked = int(round(ratio * num_patches))
    if not 0 < n_masked < num_patches:
        raise ValueError(f"mask ratio {ratio} leaves no masked or no visible patch of {num_patches}")
    noise = torch.rand(batch, num_patches, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_masked], True)
    return mask
