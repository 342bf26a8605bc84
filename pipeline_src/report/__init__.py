"""Stage 5: memory and throughput of D-CHAG vs TP-only, measured here, projected to scale, and a layout planner."""
