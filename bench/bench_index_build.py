"""Time to build the GPT sample indices for a large dataset (default 1e9 tokens, 1e6 documents).

    python bench/bench_index_build.py [--tokens 1e9] [--docs 1e6] [--seq-length 2048] [--epochs 1]

Writes an .idx with synthetic (log-normal) document lengths and a sparse .bin of the matching
size, so no token is ever written, then times GPTDataset's first build (document shuffle,
C++ sample index, shuffle index, cache files) and the cached reload. Prints one line.
"""

import argparse
import os
import shutil
import time

import numpy as np

from megalite.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megalite.data.indexed import IndexedDataset, write_index

WORK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench", "index")


def synthetic_dataset(prefix: str, tokens: int, docs: int, seed: int = 0) -> IndexedDataset:
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=1.0, size=docs)
    lengths = np.maximum(1, np.round(lengths * tokens / lengths.sum())).astype(np.int64)
    lengths[-1] += tokens - lengths.sum()  # hit the token count exactly
    write_index(prefix + ".idx", np.uint16, lengths.astype(np.int32), np.arange(docs + 1))
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(lengths.sum()) * 2)  # sparse: takes no disk space
    return IndexedDataset(prefix)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, default=1e9)
    p.add_argument("--docs", type=float, default=1e6)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--epochs", type=float, default=1.0, help="samples requested, in epochs")
    a = p.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    ds = synthetic_dataset(os.path.join(WORK, "synthetic"), int(a.tokens), int(a.docs))
    num_samples = int(a.epochs * (ds.num_tokens - 1) // a.seq_length)
    cfg = GPTDatasetConfig(seq_length=a.seq_length, data_cache_path=os.path.join(WORK, "cache"))
    t0 = time.perf_counter()
    built = GPTDataset(ds, "train", (0, len(ds)), num_samples, cfg)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = GPTDataset(ds, "train", (0, len(ds)), num_samples, cfg)
    t_load = time.perf_counter() - t0
    assert built.built_indices and not loaded.built_indices
    print(f"bench_index_build: {ds.num_tokens / 1e9:.2f}B tokens, {len(ds)} docs, seq {a.seq_length}, "
          f"{len(built)} samples ({len(built.document_index) // len(ds)} epochs) | build {t_build:.2f}s | "
          f"cached load {t_load:.3f}s")
    shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
