"""From band keys to duplicate pairs to clusters, with numpy on whole arrays.

Documents are 64-bit ids ``shard << 32 | position``. Pairs link each document to the first
document (smallest id) sharing its key; clusters are the connected components of all pairs,
and every member but the smallest id is a duplicate. So the first copy in input order is
kept, whatever the number of tasks.
"""

from typing import List, Tuple

import numpy as np


def doc_ids(shard: int, positions: np.ndarray) -> np.ndarray:
    return (np.uint64(shard) << np.uint64(32)) | positions.astype(np.uint64)


def pairs_of(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(n, 2) pairs (first id with this key, other id) for every key held by several ids."""
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    same = keys[1:] == keys[:-1]
    if not same.any():
        return np.empty((0, 2), np.uint64)
    starts = np.concatenate(([True], ~same))
    first = ids[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    dup = ~starts
    return np.stack([first[dup], ids[dup]], axis=1)


def duplicates(pairs: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Ids to remove: every member of a connected component except its smallest id.
    Returns (sorted duplicate ids, sizes of the clusters)."""
    edges = np.concatenate(pairs) if pairs else np.empty((0, 2), np.uint64)
    if len(edges) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    nodes, index = np.unique(edges, return_inverse=True)
    a, b = index.reshape(-1, 2).T
    parent = np.arange(len(nodes))
    while True:  # hook larger roots under smaller ones, then flatten, until no edge spans two roots
        ra, rb = parent[a], parent[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        spanning = lo != hi
        if not spanning.any():
            break
        np.minimum.at(parent, hi[spanning], lo[spanning])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    is_dup = parent != np.arange(len(nodes))
    return nodes[is_dup], np.bincount(parent)[np.unique(parent)]
