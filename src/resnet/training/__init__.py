"""Training: recipes (the paper's and others), the training loop, checkpoints, distributed set-up."""
