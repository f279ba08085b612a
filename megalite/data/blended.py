"""Mixing several datasets by weight (``--data-path 0.3 a 0.7 b``), and the train/valid/test build.

Blending is deterministic and needs no RNG: sample i of the blend comes from the dataset
furthest behind its share (C++ helper), so every prefix of the blend follows the weights.
Each prefix is split by documents first, so a document never appears in two splits.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from megalite.data.gpt_dataset import SPLIT_NAMES, GPTDataset, GPTDatasetConfig, parse_split, split_ranges
from megalite.data.helpers import build_blending_indices
from megalite.data.indexed import IndexedDataset
from megalite.errors import MegaliteError


def parse_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """['0.3', 'a', '0.7', 'b'] -> (['a', 'b'], [0.3, 0.7]); ['a', 'b'] -> (['a', 'b'], None)."""
    items = list(data_path)
    if not items:
        raise MegaliteError("--data-path is empty")
    if len(items) == 1:
        return items, None
    try:
        float(items[0])
    except ValueError:
        return items, None
    if len(items) % 2:
        raise MegaliteError("--data-path with weights needs pairs: WEIGHT PREFIX [WEIGHT PREFIX ...]")
    try:
        weights = [float(w) for w in items[0::2]]
    except ValueError:
        raise MegaliteError(f"--data-path: weights must be numbers, got {items[0::2]}") from None
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise MegaliteError("--data-path weights must be non-negative and not all zero")
    return items[1::2], weights


class BlendedDataset:
    """Sample i is ``datasets[dataset_index[i]][dataset_sample_index[i]]``."""

    def __init__(self, datasets: Sequence, dataset_index: np.ndarray, dataset_sample_index: np.ndarray):
        self.datasets = list(datasets)
        self.dataset_index, self.dataset_sample_index = dataset_index, dataset_sample_index
        for d, ds in enumerate(self.datasets):
            used = dataset_sample_index[dataset_index == d]
            if len(used) and int(used.max()) >= len(ds):
                raise MegaliteError(f"blended dataset {d} has {len(ds)} samples, {int(used.max()) + 1} needed")

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int):
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]


def blending_indices(weights: Sequence[float], size: int):
    """(dataset id, sample index within it) for each of ``size`` blended samples."""
    w = np.asarray(weights, dtype=np.float64)
    return build_blending_indices(w / w.sum(), size)


def build_gpt_datasets(
    data_path: Sequence[str],
    num_samples: Sequence[Optional[int]],
    config: GPTDatasetConfig,
) -> List[Optional[object]]:
    """[train, valid, test] datasets (None where a split is empty or asked for no samples)."""
    prefixes, weights = parse_data_path(data_path)
    indexed = [IndexedDataset(p, mmap=config.mmap_bin_files) for p in prefixes]
    for p, ds in zip(prefixes, indexed):
        if ds.num_tokens == 0:
            raise MegaliteError(f"--data-path {p}: the dataset is empty ({ds.num_documents} documents, 0 tokens)")
    split_weights = parse_split(config.split)
    ranges = [split_ranges(len(ds), split_weights) for ds in indexed]
    out: List[Optional[object]] = []
    for s, name in enumerate(SPLIT_NAMES):
        n = num_samples[s] if s < len(num_samples) else None
        parts = [(ds, r[s]) for ds, r in zip(indexed, ranges)]
        if n == 0 or all(hi <= lo for _, (lo, hi) in parts):
            if name == "train" and n:
                raise MegaliteError(f"--split {config.split} leaves no documents for training in --data-path "
                                    + " ".join(prefixes))
            out.append(None)
            continue
        if len(parts) == 1:
            ds, rng = parts[0]
            out.append(GPTDataset(ds, name, rng, n, config))
            continue
        w = weights or [float(ds.sequence_lengths[lo:hi].sum()) for ds, (lo, hi) in parts]
        if n is None:
            raise MegaliteError(f"blending needs a number of {name} samples")
        which, local = blending_indices(w, n)
        datasets = [
            GPTDataset(ds, name, rng, int(np.count_nonzero(which == d)), config) if rng[1] > rng[0] else _Empty()
            for d, (ds, rng) in enumerate(parts)
        ]
        out.append(BlendedDataset(datasets, which, local))
    return out


class _Empty:
    """Stands in for a dataset whose split has no documents (it must get zero weight)."""

    def __len__(self) -> int:
        return 0
