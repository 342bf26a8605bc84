"""Distribution applied from outside the model: launch env, device mesh, TP/FSDP plans, D-CHAG gather, DCP."""
