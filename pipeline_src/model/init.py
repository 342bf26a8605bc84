"""Initial weights that do not depend on how the model is split or where it was built.

Every parameter is drawn from its own generator, seeded from (run seed, parameter name).
A model built whole on one process and the same model built on the meta device, cut
over any mesh and materialised shard by shard therefore start from the same weights: a
D-CHAG partition's private encoder is named by its partition index, not by its rank.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn

Writer = Callable[[nn.Parameter, torch.Tensor], None]


def param_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed for parameter `name` of a run seeded with `seed`."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def init_parameter(module: nn.Module, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
    """Fill `tensor` (full, unsharded shape) with the initial value of `module`'s parameter `name`."""
    custom = getattr(module, "init_parameter", None)
    if custom is not None:
        custom(name, tensor, generator)
    elif isinstance(module, nn.Linear) and name == "weight":
        nn.init.trunc_normal_(tensor, std=0.02, generator=generator)
    elif isinstance(module, nn.Linear) and name == "bias":
        nn.init.zeros_(tensor)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(tensor) if name == "weight" else nn.init.zeros_(tensor)
    else:
        raise TypeError(f"no initialiser for parameter {name!r} of {type(module).__name__}")


def _copy(param: nn.Parameter, full: torch.Tensor) -> None:
    param.copy_(full)


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, write: Writer = _copy) -> None:
    """Initialise every parameter of `model` from (seed, its name); `write` stores the full value.

    The full value of one parameter at a time is made on the parameter's device; `write`
    copies the whole of it (the default) or, for a sharded parameter, this rank's piece.
    """
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if param.device.type == "meta":
                raise ValueError("materialise the model (to_empty) before initialising it")
            qualified = f"{module_name}.{name}" if module_name else name
            generator = torch.Generator(device=param.device).manual_seed(param_seed(seed, qualified))
            full = torch.empty(tuple(param.shape), dtype=param.dtype, device=param.device)
            init_parameter(module, name, full, generator)
            write(param, full)
