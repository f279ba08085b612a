"""Conversion between megalite checkpoints and Hugging Face model folders."""
