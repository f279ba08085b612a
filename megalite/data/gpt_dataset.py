"""Fixed-length GPT training samples drawn from a ``.bin/.idx`` dataset, Megatron style.

A split is a contiguous range of documents (``--split 969,30,1``). For the requested number
of samples we take enough epochs over that range, shuffle the document order of each epoch
by the seed, and cut the concatenated token stream into samples of ``seq_length + 1`` tokens
(inputs plus the shifted label), consecutive samples sharing one token. Three arrays describe
this and are cached on disk under a hash of everything that shapes them:

    document_index  [epochs * docs]       document ids in reading order
    sample_index    [samples + 1, 2]      (position in document_index, token offset) of each start
    shuffle_index   [samples]             the order samples are served in

The sample index is built by the C++ helper; the rest is numpy.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.distributed as dist

from megalite.data.helpers import build_sample_index
from megalite.data.indexed import IndexedDataset, bin_path, idx_path
from megalite.errors import MegaliteError
from megalite.utils.atomic import atomic_write

SPLIT_NAMES = ("train", "valid", "test")
INDEX_VERSION = 1  # bump when the index algorithm changes, to invalidate old caches
# A final partial epoch contributing fewer samples than this fraction of an epoch is shuffled
# on its own, so the first num_samples samples still cover every earlier epoch evenly.
SEPARATE_FINAL_EPOCH_BELOW = 0.8


@dataclass(frozen=True)
class GPTDatasetConfig:
    seq_length: int
    seed: int = 1234
    split: str = "969,30,1"
    data_cache_path: Optional[str] = None
    add_extra_token: bool = True  # samples hold seq_length + 1 tokens
    drop_last_partial_validation: bool = True
    eod_id: Optional[int] = None  # with eod_mask_loss, labels equal to eod get no loss
    pad_id: int = 0  # fills a partial last sample (when it is kept); masked from the loss
    eod_mask_loss: bool = False
    vocab_size: Optional[int] = None  # ids must be below it (the model's side passes it in); None: unchecked
    mmap_bin_files: bool = True  # False: each .bin is read into memory (--no-mmap-bin-files)


def parse_split(split: str) -> List[float]:
    """'969,30,1' -> [0.969, 0.03, 0.001]; fewer than three parts leave later splits empty."""
    try:
        # quotes a launch script passed through literally ("--split '99,1,0'") are no part of it
        parts = [float(s) for s in split.strip("'\"").replace("/", ",").split(",") if s.strip()]
    except ValueError:
        raise MegaliteError(f"--split {split!r}: expected up to three comma-separated numbers") from None
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise MegaliteError(f"--split {split!r}: expected up to three non-negative numbers, not all zero")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return [p / total for p in parts]


def split_ranges(num_documents: int, weights: Sequence[float]) -> List[Tuple[int, int]]:
    """Contiguous document ranges per split, rounding so they exactly cover all documents."""
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w * num_documents)))
    excess = bounds[-1] - num_documents
    bounds = [bounds[0]] + [b - excess for b in bounds[1:]]
    return [(max(0, bounds[i]), max(0, bounds[i + 1])) for i in range(len(weights))]


def num_epochs_needed(tokens_per_epoch: int, num_samples: int, seq_length: int, extra: int) -> int:
    needed = num_samples * seq_length + extra
    return max(1, -(-needed // tokens_per_epoch))


def build_indices(
    sizes: np.ndarray,
    documents: np.ndarray,
    num_samples: Optional[int],
    seq_length: int,
    seed: int,
    add_extra_token: bool = True,
    drop_last: bool = True,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document_index, sample_index, shuffle_index) for ``documents`` (ids into ``sizes``)."""
    extra = int(add_extra_token)
    tokens_per_epoch = int(np.asarray(sizes)[documents].sum(dtype=np.int64))
    if tokens_per_epoch <= extra:
        raise MegaliteError(f"the split holds only {tokens_per_epoch} tokens, too few for one sample")
    epochs = 1 if num_samples is None else num_epochs_needed(tokens_per_epoch, num_samples, seq_length, extra)
    rng = np.random.default_rng(seed)
    doc_dtype = np.int32 if len(sizes) < 2**31 else np.int64
    document_index = np.concatenate([rng.permutation(documents).astype(doc_dtype) for _ in range(epochs)])
    sample_index = build_sample_index(sizes, document_index, seq_length, drop_last, extra)
    total = len(sample_index) - 1

    first_block = total
    if epochs > 1:
        before_final = ((epochs - 1) * tokens_per_epoch - extra) // seq_length
        per_epoch = (tokens_per_epoch - extra) // seq_length
        if num_samples - before_final < int(SEPARATE_FINAL_EPOCH_BELOW * per_epoch):
            first_block = before_final
    idx_dtype = np.uint32 if total < np.iinfo(np.uint32).max else np.int64
    shuffle_index = np.concatenate([
        rng.permutation(np.arange(0, first_block, dtype=idx_dtype)),
        rng.permutation(np.arange(first_block, total, dtype=idx_dtype)),
    ])
    return document_index, sample_index, shuffle_index


class GPTDataset:
    """Samples of one split of one ``.bin/.idx`` dataset; ``ds[i]`` is a dict of numpy arrays."""

    def __init__(
        self,
        indexed: IndexedDataset,
        split: str,
        document_range: Tuple[int, int],
        num_samples: Optional[int],
        config: GPTDatasetConfig,
    ):
        self.indexed, self.split, self.config = indexed, split, config
        self.document_range = tuple(int(x) for x in document_range)
        self.num_samples = num_samples
        self.description = {
            "class": "GPTDataset",
            "index_version": INDEX_VERSION,
            "path_prefix": os.path.abspath(indexed.path_prefix),
            "idx_fingerprint": _file_fingerprint(idx_path(indexed.path_prefix)),
            "split": split,
            "document_range": list(self.document_range),
            "num_samples": num_samples,
            "seq_length": config.seq_length,
            "seed": config.seed,
            "add_extra_token": config.add_extra_token,
            "drop_last": self._drop_last,
        }
        self.document_index, self.sample_index, self.shuffle_index = self._load_or_build()

    @property
    def _drop_last(self) -> bool:
        return self.split != "valid" or self.config.drop_last_partial_validation

    def _build(self):
        lo, hi = self.document_range
        return build_indices(
            self.indexed.sequence_lengths, np.arange(lo, hi), self.num_samples, self.config.seq_length,
            self.config.seed, self.config.add_extra_token, self._drop_last,
        )

    @property
    def cache_dir(self) -> str:
        if self.config.data_cache_path:
            return self.config.data_cache_path
        return os.path.join(os.path.dirname(os.path.abspath(self.indexed.path_prefix)), "cache", "GPTDataset_indices")

    def _cache_paths(self) -> Dict[str, str]:
        text = json.dumps(self.description, sort_keys=True)
        digest = hashlib.md5(text.encode()).hexdigest()
        base = os.path.join(self.cache_dir, f"{digest}-GPTDataset-{self.split}")
        names = ("description.json", "document_index.npy", "sample_index.npy", "shuffle_index.npy")
        return {n.split(".")[0]: f"{base}-{n}" for n in names}

    def _load_or_build(self):
        paths = self._cache_paths()
        if _is_builder_rank() and not self._cache_valid(paths):
            arrays = self._build()
            os.makedirs(self.cache_dir, exist_ok=True)
            for name, array in zip(("document_index", "sample_index", "shuffle_index"), arrays):
                with atomic_write(paths[name]) as f:
                    np.save(f, array, allow_pickle=False)
            # The description goes last: its presence marks a complete cache entry.
            with atomic_write(paths["description"], "w") as f:
                json.dump(self.description, f, indent=1, sort_keys=True)
            self.built_indices = True
        else:
            self.built_indices = False
        _barrier()
        if not self._cache_valid(paths):
            raise MegaliteError(f"{self.cache_dir}: GPT dataset index cache is missing after building it")
        return tuple(np.load(paths[n], mmap_mode="r", allow_pickle=False)
                     for n in ("document_index", "sample_index", "shuffle_index"))

    def _cache_valid(self, paths) -> bool:
        if not all(os.path.isfile(p) for p in paths.values()):
            return False
        with open(paths["description"]) as f:
            try:
                return json.load(f) == self.description
            except json.JSONDecodeError:
                return False

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def sample_tokens(self, i: int) -> np.ndarray:
        """The ``seq_length + 1`` token ids of sample ``i`` (after shuffling), padded if partial."""
        cfg = self.config
        s, extra = int(self.shuffle_index[i]), int(cfg.add_extra_token)
        want = cfg.seq_length + extra
        (d0, off0), (d1, off1) = self.sample_index[s], self.sample_index[s + 1]
        d0, off0, d1, off1 = int(d0), int(off0), int(d1), int(off1)
        if d0 == d1:  # (position in document_index, offset, length) of each piece
            spans = [(d0, off0, off1 - off0 + extra)]
        else:
            spans = [(d0, off0, None), *((d, 0, None) for d in range(d0 + 1, d1)), (d1, 0, off1 + extra)]
        docs = [int(self.document_index[d]) for d, _, _ in spans]
        parts = [self.indexed.get(doc, off, n) for doc, (_, off, n) in zip(docs, spans)]
        tokens = np.concatenate(parts).astype(np.int64)
        if cfg.vocab_size is not None and len(tokens) and (tokens.max() >= cfg.vocab_size or tokens.min() < 0):
            self._refuse_ids(parts, docs)
        if len(tokens) < want:
            tokens = np.concatenate([tokens, np.full(want - len(tokens), -1, dtype=np.int64)])
        return tokens

    def _refuse_ids(self, parts, docs) -> None:
        """One line naming the file and the first document of the sample with an id outside the
        vocabulary (a corrupt .bin, or one made with another tokenizer), before the embedding
        meets it."""
        vocab = self.config.vocab_size
        for part, doc in zip(parts, docs):
            bad = part[(part >= vocab) | (part < 0)]
            if len(bad):
                raise MegaliteError(f"{bin_path(self.indexed.path_prefix)}: document {doc} holds token id "
                                    f"{int(bad[0])}, outside the vocabulary of {vocab}; the file is corrupt or "
                                    "was made with another tokenizer")

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        return make_lm_sample(self.sample_tokens(i), self.config)


def make_lm_sample(tokens: np.ndarray, config: GPTDatasetConfig) -> Dict[str, np.ndarray]:
    """Inputs, next-token labels and loss mask from ``seq_length + 1`` tokens (-1 = padding)."""
    inputs, labels = tokens[:-1].copy(), tokens[1:].copy()
    loss_mask = (labels >= 0).astype(np.float32)
    if config.eod_mask_loss and config.eod_id is not None:
        loss_mask[labels == config.eod_id] = 0.0
    inputs[inputs < 0] = config.pad_id
    labels[labels < 0] = config.pad_id
    return {"tokens": inputs, "labels": labels, "loss_mask": loss_mask}


def _file_fingerprint(path: str) -> List[int]:
    """Size and modification time: a rewritten dataset invalidates its cached indices."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _is_builder_rank() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()

