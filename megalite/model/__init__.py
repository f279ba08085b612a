"""The decoder-only transformer, built from megalite.parallel layers."""

from megalite.model.gpt import GPTModel  # noqa: F401
