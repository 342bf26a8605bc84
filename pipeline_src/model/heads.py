"""Task heads: forecast fields at a lead time, and the masked-autoencoder decoder."""

from __future__ import annotations

import torch
from torch import nn

from .tokenizer import unpatchify
from .vit import Backbone, DistanceBias


class ForecastHead(nn.Module):
    """Tokens (B, L, D) -> fields (B, V, H, W) of the `outputs` target variables."""

    def __init__(self, dim: int, outputs: int, patch: int, grid: tuple[int, int]):
        super().__init__()
        self.outputs, self.patch, self.grid = outputs, patch, grid
        self.linear = nn.Linear(dim, outputs * patch * patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, length, _ = tokens.shape
        pixels = self.linear(tokens).reshape(b, length, self.outputs, -1).transpose(1, 2)
        return unpatchify(pixels, self.patch, self.grid)


class MAEDecoder(nn.Module):
    """MAE decoder: put a mask token at every masked patch, run blocks, predict every channel.

    Input is the encoder output for the visible patches (B, L_vis, D) and the mask (B, L);
    output is the reconstruction of all C channels of every patch, (B, L, C * patch**2).
    With `slopes` (one per head) the decoder's attention scores fall with the distance between
    patches (DistanceBias): a masked patch can copy from the visible patches around it without
    first learning locality from the position codes.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, channels: int,
                 patch: int, grid: tuple[int, int], slopes: tuple[float, ...] = ()):
        super().__init__()
        num_patches = grid[0] * grid[1]
        self.distance_bias = DistanceBias(slopes, grid) if slopes else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))
        self.blocks = Backbone(dim, depth, heads, mlp_ratio)
        self.linear = nn.Linear(dim, channels * patch * patch)

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Small random mask token and learned decoder position embeddings."""
        nn.init.trunc_normal_(tensor, std=0.02, generator=generator)

    def forward(self, visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length = mask.shape
        full = self.mask_token.expand(b, length, -1).clone()
        full[~mask] = visible.reshape(-1, visible.shape[-1])
        bias = self.distance_bias(full.device) if self.distance_bias is not None else None
        return self.linear(self.blocks(full + self.pos_embed, bias=bias))
