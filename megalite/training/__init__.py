"""Optimizer, schedules, the training loop, checkpoints and logging."""
