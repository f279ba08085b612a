"""Loads the compiled index builders (csrc/helpers.cpp) with a clear message when missing."""

import numpy as np

from megalite.errors import MegaliteError

try:
    from megalite import _helpers
except ImportError as e:  # pragma: no cover - only hit on a broken install
    raise MegaliteError(
        "megalite's C++ helpers (megalite._helpers) are not built; "
        "run `pip install -e .` in the repository"
    ) from e


def build_sample_index(sizes, document_index, seq_length: int, drop_last: bool, extra_token: int):
    """[num_samples + 1, 2] array of (position in document_index, token offset) per sample."""
    return _helpers.build_sample_index(
        np.ascontiguousarray(sizes, dtype=np.int32),
        np.ascontiguousarray(document_index),
        int(seq_length),
        bool(drop_last),
        int(extra_token),
    )


def build_blending_indices(weights, size: int):
    """(dataset id per blended sample, sample index inside that dataset)."""
    return _helpers.build_blending_indices(np.asarray(weights, dtype=np.float64), int(size))
