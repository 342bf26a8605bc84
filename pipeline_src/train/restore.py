"""Load a trained checkpoint into a single-process model (evaluation, inspection, tests)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..model.build import ModelSpec, build_model
from ..parallel import checkpoint as ckpt


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The whole model of a checkpoint written at any world size, on one process, and its meta."""
    meta = ckpt.read_meta(path)
    spec = ModelSpec.from_dict(meta["spec"])
    with torch.device("meta"):
        model = build_model(spec, seed=None)
    model.to_empty(device=device)  # every value comes from the checkpoint
    with warnings.catch_warnings():  # DCP notes that it loads without a process group: intended
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        ckpt.load_checkpoint(path, model, None, spec_dict=spec.to_dict(), fingerprint=spec.fingerprint())
    return model.eval(), meta
