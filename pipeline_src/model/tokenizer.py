"""Per-channel patch embedding: every channel has its own single-channel projection."""

from __future__ import annotations

import torch
from torch import nn


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, L, patch*patch), patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c, (h // patch) * (w // patch), patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, L, patch*patch) -> (B, C, H, W); the inverse of patchify."""
    b, c = tokens.shape[:2]
    gh, gw = grid
    x = tokens.reshape(b, c, gh, gw, patch, patch).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c, gh * patch, gw * patch)


class ChannelTokenizer(nn.Module):
    """Embed each of `channels` input channels separately: (B, c, H, W) -> (B, c, L, D).

    Equivalent to one Conv2d(1, D, patch, stride=patch) per channel, batched as one einsum.
    The learned channel (variable) embedding is added to every token of its channel and
    doubles as the projection's bias.
    """

    def __init__(self, channels: int, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.weight = nn.Parameter(torch.empty(channels, patch * patch, dim))
        self.channel_embed = nn.Parameter(torch.empty(channels, dim))

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Fan-in scaled projection, small channel embeddings."""
        if name == "weight":
            nn.init.normal_(tensor, std=(self.patch * self.patch) ** -0.5, generator=generator)
        else:
            nn.init.trunc_normal_(tensor, std=0.02, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = patchify(x, self.patch)
        tokens = torch.einsum("bclk,ckd->bcld", patches, self.weight)
        # in the einsum's dtype: under bf16 autocast an fp32 embedding would promote all C x L tokens to fp32
        return tokens + self.channel_embed.to(tokens.dtype)[None, :, None, :]
