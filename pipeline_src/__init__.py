"""D-CHAG pipeline: ERA5 and hyperspectral stages, distributed training, evaluation."""

__version__ = "0.1.0"
