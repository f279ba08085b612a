"""Deduplication steps: exact (normalised-text hash) and MinHash near-duplicates.

They need every shard's documents, so the pipeline runs them in stages (see
``data_tools.clean.plan``): each shard writes the keys of the documents reaching the step;
tasks group equal keys per band and hash range into duplicate pairs; one task joins the
pairs into clusters and keeps each cluster's first document (first by shard, then by
position); the next pass removes the others with reason ``duplicate``.
"""

from typing import List, Sequence

import numpy as np

from data_tools.clean.dedup.minhash import MinHasher
from data_tools.clean.dedup.normalize import normalized_text
from data_tools.clean.steps.base import Step


class DedupStep(Step):
    """``band_keys`` gives each document ``bands`` 64-bit keys; two documents that share a
    key in any band are duplicates. ``hash_ranges`` splits each band's key space so more
    tasks can find pairs in parallel."""

    bands = 1

    def __init__(self, hash_ranges: int = 1):
        super().__init__()
        if hash_ranges < 1 or hash_ranges & (hash_ranges - 1):
            raise ValueError(f"{self.name}: hash_ranges must be a power of two, not {hash_ranges}")
        self.hash_ranges = hash_ranges

    def band_keys(self, texts: Sequence[str]) -> List[np.ndarray]:
        raise NotImplementedError

    def process(self, doc):
        raise TypeError(f"{self.name} runs across shards, not per document")


class ExactDedup(DedupStep):
    name = "exact_dedup"

    def band_keys(self, texts: Sequence[str]) -> List[np.ndarray]:
        import xxhash

        return [np.array([xxhash.xxh3_64_intdigest(normalized_text(t))], np.uint64) for t in texts]


class MinHashDedup(DedupStep):
    name = "minhash_dedup"

    def __init__(self, n_grams: int = 5, bands: int = 14, rows: int = 8, seed: int = 1, hash_ranges: int = 1):
        super().__init__(hash_ranges)
        self.bands = bands
        self.hasher = MinHasher(n_grams, bands, rows, seed)

    def band_keys(self, texts: Sequence[str]) -> List[np.ndarray]:
        return self.hasher.band_keys(texts)
