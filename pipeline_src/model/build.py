"""Model variant (tp-baseline, dchag-L, dchag-C, the gather-all control) + task -> an nn.Module, from one spec."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from torch import nn

from .aggregation import BaselineFrontEnd, DCHAGFrontEnd, partition_bounds, tree_sizes
from .arch import Forecaster, MaskedAutoencoder
from .init import init_weights

ARCHS = ("tp-baseline", "dchag-L", "dchag-C", "gather-all")
POOL_SHARING = ("partition", "node")
TASKS = ("forecast", "mae")
PARTIAL_KIND = {"dchag-L": "linear", "dchag-C": "attention", "gather-all": "none"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes a model's parameter shapes (and hence its checkpoint layout)."""

    arch: str
    task: str
    channels: int
    image: tuple[int, int]
    patch: int
    dim: int
    depth: int
    heads: int
    agg_heads: int
    mlp_ratio: float = 4.0
    partitions: int = 1
    tree: tuple[int, ...] = ()
    outputs: int = 0
    decoder_depth: int = 1
    decoder_slopes: tuple[float, ...] = ()
    pool_sharing: str = "partition"  # dchag-C trees: one pool per partition, or one per tree node ("node")
    channel_names: tuple[str, ...] = field(default=())

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (H/patch, W/patch)."""
        return self.image[0] // self.patch, self.image[1] // self.patch

    def fingerprint(self) -> str:
        """Stable hash of the spec: equal fingerprints mean interchangeable checkpoints."""
        d = self.to_dict()
        if not d["decoder_slopes"]:
            del d["decoder_slopes"]  # as before the field existed: older checkpoints still match
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """A JSON-ready dict of the spec."""
        d = asdict(self)
        d["image"], d["tree"], d["channel_names"] = list(self.image), list(self.tree), list(self.channel_names)
        d["decoder_slopes"] = list(self.decoder_slopes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Inverse of to_dict."""
        d = dict(d)
        d["image"], d["tree"] = tuple(d["image"]), tuple(d["tree"])
        d["decoder_slopes"] = tuple(d.get("decoder_slopes", ()))
        d["channel_names"] = tuple(d.get("channel_names", ()))
        return cls(**d)


def check_spec(spec: ModelSpec) -> None:
    """Raise ValueError naming the problem if the spec cannot be built."""
    if spec.arch not in ARCHS:
        raise ValueError(f"unknown architecture {spec.arch!r}; choose one of {', '.join(ARCHS)}")
    if spec.pool_sharing not in POOL_SHARING:
        raise ValueError(f"unknown pool_sharing {spec.pool_sharing!r}; choose one of {', '.join(POOL_SHARING)}")
    if spec.task not in TASKS:
        raise ValueError(f"unknown task {spec.task!r}; choose one of {', '.join(TASKS)}")
    h, w = spec.image
    if h % spec.patch or w % spec.patch:
        raise ValueError(f"image {h}x{w} is not divisible by patch {spec.patch}")
    for name, heads in (("heads", spec.heads), ("agg_heads", spec.agg_heads)):
        if spec.dim % heads:
            raise ValueError(f"model.dim {spec.dim} is not divisible by model.{name} {heads}")
    if spec.dim % 4:
        raise ValueError(f"model.dim {spec.dim} must be a multiple of 4 (2-D position codes)")
    if spec.decoder_slopes and (len(spec.decoder_slopes) != spec.heads or min(spec.decoder_slopes) < 0):
        raise ValueError(f"model.decoder_slopes {list(spec.decoder_slopes)} needs one slope >= 0 for each of "
                         f"the {spec.heads} heads")
    if spec.task == "forecast" and spec.outputs < 1:
        raise ValueError("a forecaster needs at least one output variable")
    if spec.arch != "tp-baseline":
        if not 1 <= spec.partitions <= spec.channels:
            raise ValueError(f"{spec.partitions} D-CHAG partitions for {spec.channels} channels: "
                             f"each partition needs at least one channel")
        for start, stop in partition_bounds(spec.channels, spec.partitions):
            tree_sizes(stop - start, spec.tree)
    if spec.arch == "gather-all" and (spec.tree or spec.channels % spec.partitions):
        raise ValueError(f"gather-all aggregates nothing before its gather: it takes no tree and "
                         f"{spec.partitions} equal partitions of the {spec.channels} channels")


def build_model(spec: ModelSpec, seed: int | None = 0) -> nn.Module:
    """Construct the model for a spec; with a seed, initialise it (name-seeded, see model.init).

    Under `with torch.device("meta"):` and seed=None this allocates nothing: the
    distributed path builds that way, cuts the model, then materialises its own share.
    """
    check_spec(spec)
    if spec.arch == "tp-baseline":
        front = BaselineFrontEnd(spec.channels, spec.patch, spec.dim, spec.agg_heads)
    else:
        front = DCHAGFrontEnd(spec.channels, spec.partitions, spec.patch, spec.dim, spec.agg_heads,
                              PARTIAL_KIND[spec.arch], spec.tree, spec.pool_sharing == "partition")
    if spec.task == "forecast":
        model = Forecaster(front, spec.grid, spec.dim, spec.depth, spec.heads, spec.mlp_ratio,
                           spec.outputs, spec.patch)
    else:
        model = MaskedAutoencoder(front, spec.grid, spec.dim, spec.depth, spec.heads,
                                  spec.mlp_ratio, spec.channels, spec.patch, spec.decoder_depth,
                                  spec.decoder_slopes)
    if seed is not None:
        init_weights(model, seed)
    return model
