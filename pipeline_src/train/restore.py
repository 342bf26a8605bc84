"""Load a trained checkpoint into a single-process model (evaluation, inspection, tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..model.build import ModelSpec, build_model
from ..parallel import checkpoint as ckpt


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The whole model of a checkpoint written at any world size, on one process, and its meta."""
    meta = ckpt.read_meta(path)
    spec = ModelSpec.from_dict(meta["spec"])
    model = build_model(spec).to(device)
    ckpt.load_checkpoint(path, model, None, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    return model.eval(), meta
