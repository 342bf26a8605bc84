"""Training: datasets and samplers, losses, schedule, and the distributed loop."""
