"""The model and optimizer of one training rank, built the way that scales, and its optimizer step.

Build on the meta device -> activation checkpointing -> D-CHAG/TP/FSDP2 -> allocate this
rank's share and initialise it (name-seeded) -> foreach AdamW. The training loop, the
front-end benchmark and the fake-world projections go through here (evaluation builds
the same way but without an optimizer: evaluate.runtime.load_parallel).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from ..model.build import ModelSpec, build_model
from ..model.vit import num_params
from ..parallel.grads import clip_grad_norm, reduce_partial_grads
from ..parallel.materialize import materialize
from ..parallel.plans import Parallelized, parallelize
from ..parallel.recompute import apply_activation_checkpointing


@dataclass
class Engine:
    """A parallelized model, its optimizer and its precision recipe on one rank."""

    par: Parallelized
    optimizer: torch.optim.Optimizer
    device: torch.device
    total_params: int
    autocast_bf16: bool  # bf16 autocast (no FSDP); under FSDP the MixedPrecisionPolicy does it

    @property
    def model(self) -> nn.Module:
        """The parallelized model."""
        return self.par.model

    def autocast(self):
        """The forward's precision context."""
        if not self.autocast_bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self, lr: float, grad_clip: float) -> torch.Tensor:
        """Finish the gradients, clip, update, zero; the pre-clip global grad norm (on device, no sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        reduce_partial_grads(self.par)
        norm = clip_grad_norm(self.par, grad_clip) if grad_clip > 0 else torch.zeros((), device=self.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """foreach AdamW; groups by weight decay and by DTensor-or-not (foreach cannot mix the two)."""
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        groups.setdefault((p.ndim >= 2, isinstance(p, DTensor)), []).append(p)
    return torch.optim.AdamW([{"params": params, "weight_decay": weight_decay if decay else 0.0}
                              for (decay, _), params in sorted(groups.items())],
                             lr=lr, betas=(0.9, 0.95), foreach=True)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """train.precision: auto = bf16 on GPUs, fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def recipe_options(recipe) -> dict:
    """build_engine's keywords from a step recipe (the projection's and the measured runs')."""
    return dict(precision=recipe.precision, lr=recipe.lr, weight_decay=recipe.weight_decay,
                recompute=recipe.activation_checkpointing, sequence_parallel=recipe.sequence_parallel)


def build_engine(spec: ModelSpec, mesh: DeviceMesh, device: torch.device, *, seed: int | None, precision: str,
                 lr: float, weight_decay: float, recompute: str = "none", sequence_parallel: bool = False,
                 fake_mode=None) -> Engine:
    """The rank's engine for `spec` on `mesh`: precision (train.precision), recompute
    (activation_checkpointing), sequence parallelism and the AdamW optimizer; seed=None leaves
    the weights unset (a checkpoint fills them).

    fake_mode (a FakeTensorMode, for projections): the model is built as fake tensors on
    `device` directly (fake tensors cannot be swapped in for meta ones) and cut outside
    the mode, where the device mesh can make its real index tensors."""
    if fake_mode is not None:
        with fake_mode, torch.device(device):
            model = build_model(spec, seed=None)
    else:
        with torch.device("meta"):  # nothing allocated until this rank's share is known
            model = build_model(spec, seed=None)
    total = num_params(model)
    bf16 = uses_bf16(precision, device)
    fsdp_on = mesh["dp", "fsdp"].size() > 1
    # bf16 under FSDP: bf16 parameters, all-gathers and compute, fp32 gradient reduction.
    # Without FSDP the fp32 weights stay and autocast runs the matmuls in bf16.
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if bf16 and fsdp_on else None
    apply_activation_checkpointing(model, recompute)
    par = parallelize(model, mesh, mp_policy, sequence_parallel=sequence_parallel)
    if fake_mode is None:
        materialize(model, device, seed=seed)
    optimizer = make_optimizer(model, lr, weight_decay)
    return Engine(par, optimizer, device, total, bf16 and mp_policy is None)
