"""The typed sections of a training job, and the run fingerprint derived from them.

A job's settings come in sections: what the model is, how it is optimised, the data it
learns from (these three define the run), and how it is launched, checkpointed and run
(which a run may change between attempts: another mesh, another margin, more loader
workers). The fingerprint that names a run's resume folder hashes exactly the sections
marked `defines_run`, so a new setting lands on the right side by the section it is put in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

# A field that belongs to a run-defining section but is left out of the fingerprint says so
# in its metadata, with the reason beside it.
NOT_FINGERPRINTED = {"fingerprint": False}


@dataclass(frozen=True)
class ModelSettings:
    """The variant's architecture (config `model:` merged with the variant's `model:` and arch)."""

    defines_run: ClassVar[bool] = True
    arch: str
    dim: int = 64
    depth: int = 2
    heads: int = 4
    agg_heads: int = 4
    mlp_ratio: float = 4.0
    patch: int = 4
    decoder_depth: int = 1
    decoder_slopes: tuple = ()
    # With partitions auto they follow train.mesh.tp: a run resumed on another mesh must find
    # its checkpoints and be told by the architecture check that the partitions differ.
    partitions: int | str = field(default="auto", metadata=NOT_FINGERPRINTED)
    tree: tuple = ()
    pool_sharing: str = "partition"

    def __post_init__(self):
        object.__setattr__(self, "tree", tuple(self.tree))
        object.__setattr__(self, "decoder_slopes", tuple(float(v) for v in self.decoder_slopes))


@dataclass(frozen=True)
class Optimisation:
    """Steps, batch, schedule, regularisation, numerics and seed: what the weights depend on."""

    defines_run: ClassVar[bool] = True
    steps: int = 60
    micro_batch: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16
    seed: int = 0


@dataclass(frozen=True)
class Parallelism:
    """The mesh and the memory-for-compute trades; DCP reshards a run onto another mesh."""

    defines_run: ClassVar[bool] = False
    tp: int = 1
    fsdp: int = 1
    dp: int | str = "auto"
    expected_world: int | None = None  # train.nproc: refuse to start with another number of ranks
    activation_checkpointing: str = "none"  # none | blocks | full
    sequence_parallel: bool = False


@dataclass(frozen=True)
class Checkpointing:
    """When step checkpoints are written, how many are kept, and how they are written."""

    defines_run: ClassVar[bool] = False
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    checkpoint_async: bool = False  # write step checkpoints in the background (DCP async_save)
    walltime_margin_s: float = 180.0  # checkpoint and stop this long before the Slurm time limit


@dataclass(frozen=True)
class Runtime:
    """Host-side knobs: logging cadence and the data loader."""

    defines_run: ClassVar[bool] = False
    log_every: int = 5  # also how often the host syncs: loss check, stop agreement, progress
    loader_workers: int = 1  # DataLoader worker processes per rank (0 = read in the training process)
    prefetch: int = 4  # micro-batches each worker reads ahead
    data_cache_mb: int = 1024  # hold a rank's ERA5 channels in memory up to this size, else read per step


@dataclass(frozen=True)
class ForecastData:
    """The assembled ERA5 store a forecaster learns from, and what it predicts."""

    defines_run: ClassVar[bool] = True
    assembled: str
    targets: tuple
    lead_days: tuple
    space: str = "anomaly"
    version: str = ""  # hash of the store's manifest and normalisation statistics

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "lead_days", tuple(self.lead_days))


@dataclass(frozen=True)
class MaeData:
    """The spectral tiles a masked autoencoder learns from, and its objective."""

    defines_run: ClassVar[bool] = True
    bands: int = 12
    image: tuple = (16, 16)
    mask_ratio: float = 0.75
    seed: int = 0
    source: str = "synthetic"  # synthetic | hyperspectral
    loss: str = "plant"
    norm_pix: bool = False
    sampling: str = "uniform"
    heldout_every: int = 0
    heldout_draws: int = 1
    augment: dict = field(default_factory=dict)
    store: str | None = None  # train.zarr of the tiles (source hyperspectral)
    heldout_store: str | None = None  # val.zarr, scored during training
    version: str = ""  # hash of the tiles' statistics

    def __post_init__(self):
        object.__setattr__(self, "image", tuple(self.image))


# the config's train: keys by the section that holds them (TrainJob's attribute names)
TRAIN_SECTIONS = {"optim": Optimisation, "parallel": Parallelism, "checkpoint": Checkpointing, "runtime": Runtime}


def train_sections(**flat) -> dict:
    """The config's flat `train:` keys routed to their sections: {optim, parallel, checkpoint, runtime}.

    A key no section holds is a TypeError naming it (so a new schema key cannot be dropped)."""
    owner = {f.name: name for name, cls in TRAIN_SECTIONS.items() for f in dataclasses.fields(cls)}
    unknown = sorted(set(flat) - set(owner))
    if unknown:
        raise TypeError(f"training settings no section holds: {unknown}")
    return {name: cls(**{k: v for k, v in flat.items() if owner[k] == name}) for name, cls in TRAIN_SECTIONS.items()}


def section_dict(section) -> dict:
    """The section's fingerprinted fields as plain data."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
            if f.metadata.get("fingerprint", True)}


def run_fingerprint(sections: dict) -> str:
    """Hash of the run-defining sections (model, optimisation, data): names the resume folder."""
    defining = {name: section_dict(s) for name, s in sorted(sections.items()) if type(s).defines_run}
    blob = json.dumps(defining, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
