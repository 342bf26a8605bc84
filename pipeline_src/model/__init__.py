"""Channel-wise vision transformers: the TP baseline and D-CHAG front ends, plain nn.Modules.

Nothing here imports torch.distributed; pipeline_src.parallel applies tensor parallelism,
FSDP and the D-CHAG gather from outside.
"""
