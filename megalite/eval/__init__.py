"""Inference on trained checkpoints: loading, generation, perplexity."""
