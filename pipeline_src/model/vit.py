"""Pre-norm ViT blocks with SDPA attention, written so tensor parallelism can split heads and MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (column-splittable)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); bias, added to the attention scores, broadcasts to (B, local heads, N, N)."""
        b, n, _ = x.shape
        hd = self.head_dim
        q = self.q(x).reshape(b, n, -1, hd).transpose(1, 2)
        k = self.k(x).reshape(b, n, -1, hd).transpose(1, 2)
        v = self.v(x).reshape(b, n, -1, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """Two-layer GELU MLP (fc1 column-splittable, fc2 row-splittable)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias=bias)
        return x + self.mlp(self.norm2(x))


class Backbone(nn.Module):
    """A stack of blocks and a final LayerNorm over (B, N, D) token sequences."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, bias=bias)
        return self.norm(x)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes, (grid_h * grid_w, dim); half the width per axis."""
    if dim % 4:
        raise ValueError(f"embedding dim {dim} must be a multiple of 4 for 2-D position codes")
    gh, gw = grid
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        angles = pos[:, None] * freqs[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


def num_params(module: nn.Module) -> int:
    """Number of parameters (elements) in a module."""
    return sum(math.prod(p.shape) for p in module.parameters())


class DistanceBias(nn.Module):
    """Attention-score bias -slope_h x (distance between two patches, in patches), one slope per head.

    2-D ALiBi (Press et al. 2022 for 1-D; 2-D as in CROMA, Fuller et al. 2023): heads with
    large slopes look at their neighbourhood, a zero slope leaves a head global. The slopes
    are fixed, so the bias is computed, not stored; tensor parallelism keeps each rank's heads
    (keep_heads).
    """

    def __init__(self, slopes: tuple[float, ...], grid: tuple[int, int]):
        super().__init__()
        self.slopes = tuple(float(s) for s in slopes)
        self.grid = grid

    def keep_heads(self, heads: range) -> None:
        """Keep only these heads' slopes (the heads a tensor-parallel rank computes)."""
        self.slopes = tuple(self.slopes[h] for h in heads)

    def forward(self, device: torch.device | None = None) -> torch.Tensor:
        """The bias (heads, L, L) between every pair of the grid's L patches."""
        gh, gw = self.grid
        index = torch.arange(gh * gw, device=device)
        yx = torch.stack([index // gw, index % gw], dim=-1).float()
        slopes = torch.tensor(self.slopes, device=device)
        return -slopes[:, None, None] * torch.cdist(yx, yx)[None]
