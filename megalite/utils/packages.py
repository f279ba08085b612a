"""Whether an optional package is importable, without importing it (importing triton or
flash-attn takes seconds and may initialise CUDA)."""

import importlib.util


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
