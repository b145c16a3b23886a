"""Training: fit() runs a config; the step loop, its state, checkpoints, run folders, EMA and DDP."""
