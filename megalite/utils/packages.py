"""Whether an optional package is importable, without importing it (importing triton or
flash-attn takes seconds and may initialise CUDA)."""

import functools
import importlib.util


@functools.lru_cache(maxsize=None)  # asked on every kernel call; packages do not appear mid-run
def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
