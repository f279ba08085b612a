"""megalite: a readable, Megatron-style framework for pretraining decoder-only LLMs."""

__version__ = "0.1.0"
