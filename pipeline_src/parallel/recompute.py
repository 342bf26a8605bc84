"""Activation checkpointing: recompute a module's activations in backward instead of storing them."""

from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint  # keeps parameter names (no wrapper module)

from ..model.aggregation import CrossAttentionPool, PartitionEncoder
from ..model.vit import Block

MODES = {"none": (), "blocks": (Block,), "full": (Block, PartitionEncoder, CrossAttentionPool)}


def apply_activation_checkpointing(model: nn.Module, mode: str) -> int:
    """Checkpoint every ViT block ("blocks"), and every partition encoder and pool too ("full").

    Names and parameters stay as they are, so checkpoints, the name-seeded initialisation
    and the parallel plans see the same model. A pool inside a checkpointed encoder is not
    checkpointed twice. Returns the number of modules checkpointed.
    """
    if mode not in MODES:
        raise ValueError(f"unknown activation_checkpointing {mode!r}; choose one of {', '.join(MODES)}")
    done: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, MODES[mode]) and not any(name.startswith(d + ".") for d in done):
            checkpoint(module)
            done.append(name)
    return len(done)
