"""Channel aggregation: the baseline cross-attention and the D-CHAG hierarchical front end.

D-CHAG (Tsaris et al., SC25) is implemented here by hand: no maintained library ships it.
A D-CHAG front end splits the C channels into `partitions` contiguous slices. Each slice
is tokenized and reduced to ONE token per patch by its own private aggregator (a tree of
linear "-L" or cross-attention "-C" levels); the partition tokens are joined and a final
cross-attention merges them. On one process the `gather` module is the identity; under tensor
parallelism each rank keeps only its own partitions and pipeline_src.parallel swaps in the
all-gather over the TP group.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import ChannelTokenizer


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous slices of `total` items, as even as possible (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def partition_bounds(channels: int, partitions: int) -> list[tuple[int, int]]:
    """(start, stop) channel indices of each partition; uneven splits allowed."""
    bounds, start = [], 0
    for size in split_sizes(channels, partitions):
        bounds.append((start, start + size))
        start += size
    return bounds


class CrossAttentionPool(nn.Module):
    """One learned query cross-attends over the N tokens of each patch: (B, N, L, D) -> (B, L, D).

    q, k, v and proj are separate Linear layers so tensor parallelism can split heads
    (q/k/v column-wise, proj row-wise); the head count is read from the local width.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.head_dim = dim // heads
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """A small random query."""
        nn.init.trunc_normal_(tensor, std=0.02, generator=generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, length, _ = tokens.shape
        rows = tokens.permute(0, 2, 1, 3).reshape(b * length, n, -1)
        hd = self.head_dim
        q = self.q(self.query).reshape(1, 1, -1, hd).transpose(1, 2)
        k = self.k(rows).reshape(b * length, n, -1, hd).transpose(1, 2)
        v = self.v(rows).reshape(b * length, n, -1, hd).transpose(1, 2)
        q = q.expand(b * length, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B*L, heads, 1, hd)
        out = out.transpose(1, 2).reshape(b, length, -1)
        return self.proj(out)


class LinearChannelMix(nn.Module):
    """A learned weighted sum over the channel axis plus a bias: (B, N, L, D) -> (B, L, D)."""

    def __init__(self, n_in: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in))
        self.bias = nn.Parameter(torch.empty(dim))

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Start as the plain mean over the channels, no bias."""
        if name == "weight":
            tensor.fill_(1.0 / tensor.numel())
        else:
            tensor.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnld,n->bld", tokens, self.weight) + self.bias


def tree_sizes(n_channels: int, tree: Sequence[int]) -> list[int]:
    """Token counts at each level of a partial-aggregation tree, ending in 1."""
    sizes = [n_channels, *tree, 1]
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        if n_out > n_in:
            raise ValueError(f"tree level of {n_out} groups needs at least {n_out} tokens, "
                             f"has {n_in} (partition of {n_channels} channels, tree {list(tree)})")
    return sizes


class PartialAggregator(nn.Module):
    """Reduce one partition's N channel tokens to one per patch through a tree of levels.

    tree=[] is "Tree0" (N -> 1); tree=[4] aggregates 4 contiguous groups first (N -> 4 -> 1).
    kind "linear" uses a LinearChannelMix per tree node. kind "attention" uses one
    CrossAttentionPool for every node of every level (shared=True, as the D-CHAG authors
    do: the tree then costs no extra weights) or a private pool per node (shared=False).
    """

    def __init__(self, n_channels: int, kind: str, tree: Sequence[int], dim: int, heads: int,
                 shared: bool = True):
        super().__init__()
        if kind not in ("linear", "attention"):
            raise ValueError(f"unknown partial aggregator kind {kind!r}")
        sizes = tree_sizes(n_channels, tree)
        self.group_sizes = [split_sizes(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.pool = CrossAttentionPool(dim, heads) if kind == "attention" and shared else None
        self.levels = nn.ModuleList()
        if self.pool is None:
            for groups in self.group_sizes:
                nodes = [LinearChannelMix(g, dim) if kind == "linear" else CrossAttentionPool(dim, heads)
                         for g in groups]
                self.levels.append(nn.ModuleList(nodes))

    def _shared_level(self, tokens: torch.Tensor, groups: list[int]) -> torch.Tensor:
        if len(set(groups)) == 1:  # equal groups: one batched call
            b, _, length, dim = tokens.shape
            pooled = self.pool(tokens.reshape(b * len(groups), groups[0], length, dim))
            return pooled.reshape(b, len(groups), length, dim)
        return torch.stack([self.pool(part) for part in torch.split(tokens, groups, dim=1)], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        *inner, last = range(len(self.group_sizes))
        for level in inner:  # (B, N, L, D) -> (B, groups, L, D)
            groups = self.group_sizes[level]
            if self.pool is not None:
                tokens = self._shared_level(tokens, groups)
            else:
                parts = torch.split(tokens, groups, dim=1)
                tokens = torch.stack([node(part) for node, part in zip(self.levels[level], parts)], dim=1)
        # one node left: (B, groups, L, D) -> (B, L, D)
        return (self.pool if self.pool is not None else self.levels[last][0])(tokens)


class PartitionEncoder(nn.Module):
    """Tokenize one channel slice and aggregate it to one token per patch: (B, c, H, W) -> (B, L, D).

    kind "none" (the all-tokens-gather control) skips the aggregation: (B, c, H, W) -> (B, c, L, D).
    """

    def __init__(self, channels: int, patch: int, dim: int, kind: str, tree: Sequence[int], heads: int,
                 shared_pool: bool = True):
        super().__init__()
        self.tokenizer = ChannelTokenizer(channels, patch, dim)
        self.aggregate = None if kind == "none" else PartialAggregator(channels, kind, tree, dim, heads, shared_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(x)
        return tokens if self.aggregate is None else self.aggregate(tokens)


class BaselineFrontEnd(nn.Module):
    """TP-only front end: tokenize all C channels, one cross-attention over C tokens per patch."""

    def __init__(self, channels: int, patch: int, dim: int, heads: int):
        super().__init__()
        self.tokenizer = ChannelTokenizer(channels, patch, dim)
        self.aggregate = CrossAttentionPool(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.tokenizer(x))


class PartitionGather(nn.Module):
    """Joins the partition tokens of every TP rank, in rank order: (B, k, L, D) -> (B, k * tp, L, D).

    On one process every partition is local and this is the identity; under tensor
    parallelism parallel/ replaces it with the TP all-gather whose backward is a slice
    (parallel/collectives.py), so the model itself never touches torch.distributed.
    """

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


class DCHAGFrontEnd(nn.Module):
    """D-CHAG front end: private partial aggregation per channel partition, join, final attention.

    `partitions` fixes the architecture (one private encoder per slice). Under TP of size T
    each rank owns partitions/T consecutive partitions, so a checkpoint trained at one TP
    size loads at any TP size that divides `partitions`.

    kind "none" is the paper's control ("gather-all"): distributed tokenization, then the
    gather of ALL channel tokens and the final attention over C of them. It computes the
    baseline's function and saves no memory: the gain comes from aggregating before the gather.
    """

    def __init__(self, channels: int, partitions: int, patch: int, dim: int, heads: int,
                 kind: str, tree: Sequence[int], shared_pool: bool = True):
        super().__init__()
        if not 1 <= partitions <= channels:
            raise ValueError(f"{partitions} partitions for {channels} channels: need 1..{channels}")
        self.num_partitions = partitions
        self.bounds = partition_bounds(channels, partitions)
        self.partitions = nn.ModuleDict({
            str(i): PartitionEncoder(stop - start, patch, dim, kind, tree, heads, shared_pool)
            for i, (start, stop) in enumerate(self.bounds)
        })
        self.gather_all = kind == "none"
        if self.gather_all and channels % partitions:
            raise ValueError(f"gather-all needs equal partitions: {channels} channels, {partitions} partitions")
        # channel tokens carry their channel embedding; aggregated partition tokens get one of their own
        self.partition_embed = None if self.gather_all else nn.Parameter(torch.empty(partitions, dim))
        self.final = CrossAttentionPool(dim, heads)
        self.local_partitions: list[int] = list(range(partitions))
        self.gather = PartitionGather()

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Small random partition embeddings."""
        nn.init.trunc_normal_(tensor, std=0.02, generator=generator)

    def keep_partitions(self, indices: Sequence[int]) -> None:
        """Drop every partition encoder except `indices` (this rank's slice of the channels)."""
        indices = list(indices)
        for key in list(self.partitions.keys()):
            if int(key) not in indices:
                del self.partitions[key]
        self.local_partitions = indices

    def private_modules(self) -> dict[str, nn.Module]:
        """The modules private to this rank's partitions (not TP-sharded; sharded alone under FSDP), by
        name relative to this front end."""
        return {f"partitions.{key}": module for key, module in self.partitions.items()}

    def input_span(self) -> tuple[int, int]:
        """Channels [first, last) that this front end's partitions read: all, or this rank's slice."""
        return self.bounds[self.local_partitions[0]][0], self.bounds[self.local_partitions[-1]][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x holds all channels, or only input_span()'s (the data path reads no more than that)."""
        first, last = self.input_span()
        channels = self.bounds[-1][1]
        if x.shape[1] == channels:
            offset = 0
        elif x.shape[1] == last - first:
            offset = first
        else:
            raise ValueError(f"input has {x.shape[1]} channels; this front end reads all {channels} or "
                             f"its partitions' channels {first}..{last - 1} ({last - first})")
        local = []
        for i in self.local_partitions:
            start, stop = self.bounds[i]
            local.append(self.partitions[str(i)](x[:, start - offset:stop - offset]))
        if self.gather_all:
            return self.final(self.gather(torch.cat(local, dim=1)))  # (B, C, L, D)
        joined = self.gather(torch.stack(local, dim=1))  # (B, partitions, L, D)
        joined = joined + self.partition_embed[None, :, None, :]
        return self.final(joined)
