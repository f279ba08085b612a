"""Items of cached sources (DPO and reward-model pairs, KTO examples): the cache entry of one
source (``cached_items``), the items of several entries as one list (``StoreItems``) and the
seeded epochs of training samples over them (``ItemDataset``).

An entry is an ``ExampleStore`` (``megalite.data.sft_examples``): ``.bin/.idx`` sequences plus
per-sequence arrays, named by a hash of the source's files, the tokenizer, the template, the
lengths and the item kind's own settings; rank 0 builds it once, later runs and the other ranks
read it.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megalite.data.sft import epoch_shuffled
from megalite.data.sft_examples import ExampleStore, cached_store, write_store
from megalite.data.sft_formats import SFTSource
from megalite.errors import MegaliteError

CACHE_VERSION = 1
Sequences = List[Tuple[np.ndarray, np.ndarray]]  # (token ids, mask) per stored sequence


def cached_items(kind: str, source: SFTSource, tokenizer, template: str, seq_length: int, cache_dir: Optional[str],
                 settings: dict, load: Callable, tokenize: Callable, fit: Callable[..., Sequences],
                 counts: Sequence[str], arrays: Sequence[str] = (), batch: int = 512) -> ExampleStore:
    """The ``kind`` cache entry of ``source`` (``<source folder>/cache/<kind>`` or ``cache_dir``),
    named by ``settings`` besides the source, tokenizer, template and ``seq_length``. To build it,
    rank 0 tokenizes every record of ``load(source)`` with ``tokenize(tokenizer, template, record)``
    and stores the sequences ``fit(record, ids, stats, arrays)`` keeps, which counts into ``stats``
    (``counts``) and appends a value per kept sequence to each list of ``arrays`` (these names);
    the other ranks wait for it. Tokenizer errors name the file and the record."""
    description = {"version": CACHE_VERSION, "source": source.description(), "tokenizer": tokenizer.fingerprint(),
                   "special_tokens": tokenizer.special_tokens, "template": template, "seq_length": seq_length,
                   **settings}

    def build(prefix):
        stats, values = {k: 0 for k in counts}, {name: [] for name in arrays}

        def fitted():
            chunk = []
            for path, i, record in load(source):
                try:
                    ids = tokenize(tokenizer, template, record)
                except MegaliteError as e:
                    raise MegaliteError(f"{path}: record {i}: {e}") from None
                chunk += fit(record, ids, stats, values)
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
            yield chunk

        write_store(prefix, description, fitted(), stats, tokenizer.vocab_size, values)

    return cached_store(source, description, cache_dir, kind, build)


class StoreItems:
    """The items of several cached sources indexed as one list (or the ``picks`` of it), each item
    ``per_item`` documents of its store; ``split`` holds out a seeded share (--pref-valid-fraction)."""

    per_item = 1

    def __init__(self, stores: Sequence[ExampleStore], picks: Optional[np.ndarray] = None):
        self.stores = list(stores)
        self.ends = np.cumsum([len(st) // self.per_item for st in self.stores])
        self.picks = picks

    def __len__(self) -> int:
        if self.picks is not None:
            return len(self.picks)
        return int(self.ends[-1]) if len(self.ends) else 0

    def position(self, k: int) -> int:
        """Item ``k``'s position among the items of all the stores."""
        return int(self.picks[k]) if self.picks is not None else k

    def locate(self, k: int) -> Tuple[ExampleStore, int]:
        """(store, index of the item's first document in it) of item ``k``."""
        k = self.position(k)
        s = int(np.searchsorted(self.ends, k, side="right"))
        return self.stores[s], self.per_item * (k - (int(self.ends[s - 1]) if s else 0))

    def split(self, fraction: float, seed: int):
        """(training items, held-out items): a seeded ``fraction`` of the items (at least one,
        never all) is held out; None when ``fraction`` is 0."""
        if not 0 <= fraction < 1:
            raise MegaliteError(f"--pref-valid-fraction {fraction} must be in [0, 1)")
        if not fraction:
            return self, None
        order = np.random.default_rng(seed).permutation(len(self))
        k = min(max(1, round(fraction * len(self))), len(self) - 1)
        return type(self)(self.stores, np.sort(order[k:])), type(self)(self.stores, np.sort(order[:k]))


class ItemDataset(torch.utils.data.Dataset):
    """``num_samples`` samples over ``items`` (cached pairs or KTO examples), epochs over them each
    shuffled by ``seed + epoch`` (sample ``i`` is the same item in every run, so resuming is
    exact); ``ds[i]`` is ``item(k, i)`` of that item ``k``. ``held_out`` marks a validation set
    (precomputed reference scores are looked up by it and the item's index); ``stats`` are the
    data's counts (``summary``), ``count`` the one that counts the items kept."""

    noun, count = "items", "items"

    def __init__(self, items, num_samples: Optional[int] = None, seed: int = 1234,
                 stats: Optional[Dict[str, int]] = None, held_out: bool = False):
        if not len(items):
            raise MegaliteError(f"no {self.noun} to train on (every one was dropped, or the data is empty)")
        self.items, self.seed, self.held_out = items, seed, held_out
        self.num_samples = len(items) if num_samples is None else int(num_samples)
        self.stats = stats or {}
        self._order = [-1, None]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> Dict[str, object]:
        return self.item(epoch_shuffled(i, len(self.items), self.num_samples, self.seed, self._order), i)

    def held_out_note(self) -> str:
        """'; N more held out' when --pref-valid-fraction took some of the data's items."""
        n = self.stats.get(self.count, len(self.items)) - len(self.items)
        return f"; {n} more held out" if n else ""
