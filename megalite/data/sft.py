"""SFT training rows: tokenized examples packed (or not) into rows of at most ``seq_length``.

An example with ids ``x`` and trainable mask ``m`` contributes ``tokens = x[:-1]``,
``labels = x[1:]``, ``loss_mask = m[1:]`` and ``position_ids = 0 .. len(x) - 2``. Without
packing a row is one example; with packing, best-fit-decreasing bin packing fills rows of
``seq_length`` tokens with whole examples, positions restarting at 0 at each, so a packed
example gets exactly the loss it gets alone (given attention that respects the boundaries,
which ``position_ids == 0`` marks). Rows are served for ``num_samples`` samples: epochs over
the rows, each shuffled by ``seed + epoch``, so sample ``i`` is the same row in every run and
resuming at a consumed-sample count is exact. ``collate_sft`` right-pads rows into a batch.
"""

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megalite.data.sft_examples import ExampleStore, load_sources
from megalite.errors import MegaliteError
from megalite.parallel.cross_entropy import IGNORE_INDEX

COUNTS = ("examples", "truncated", "dropped")


def pack_best_fit_decreasing(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Bins (lists of item indices) holding at most ``capacity`` in total: items longest first,
    each into the bin it fills most tightly. Deterministic."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bins: List[List[int]] = []
    with_room: Dict[int, List[int]] = {}  # free space -> bins with exactly that much left
    free_sizes: List[int] = []  # sorted keys of with_room
    for item in np.argsort(-lengths, kind="stable").tolist():
        need = int(lengths[item])
        k = bisect.bisect_left(free_sizes, need)
        if k < len(free_sizes):
            room = free_sizes[k]
            b = with_room[room].pop()
            if not with_room[room]:
                del with_room[room]
                free_sizes.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(item)
        left = room - need
        if left > 0:
            if left not in with_room:
                with_room[left] = []
                bisect.insort(free_sizes, left)
            with_room[left].append(b)
    return bins


class ExampleSet:
    """A selection of examples from several stores (a split, possibly re-weighted)."""

    def __init__(self, stores: Sequence[ExampleStore], picks: np.ndarray):
        self.stores = list(stores)
        self.picks = np.asarray(picks, dtype=np.int64).reshape(-1, 2)  # (store, index in store)
        self.lengths = np.zeros(len(self.picks), dtype=np.int64)
        for s, store in enumerate(self.stores):
            mine = self.picks[:, 0] == s
            self.lengths[mine] = store.lengths[self.picks[mine, 1]]
        self.stats = {k: sum(s.stats.get(k, 0) for s in self.stores) for k in COUNTS}

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        s, j = self.picks[i]
        return self.stores[int(s)][int(j)]


def epoch_shuffled(i: int, n: int, num_samples: int, seed: int, cache: List) -> int:
    """The item sample ``i`` serves when ``num_samples`` samples run epochs over ``n`` items,
    each epoch a permutation seeded by ``seed + epoch`` (so sample ``i`` is the same item in
    every run and resuming at a sample count is exact). ``cache`` = [epoch, permutation]."""
    if not 0 <= i < num_samples:
        raise IndexError(f"sample {i} out of range [0, {num_samples})")
    epoch, j = divmod(i, n)
    if cache[0] != epoch:
        cache[:] = [epoch, np.random.default_rng(seed + epoch).permutation(n)]
    return int(cache[1][j])


class SFTDataset(torch.utils.data.Dataset):
    """``num_samples`` rows over ``examples`` (a sequence of (ids, trainable mask) pairs).

    ``ds[i]`` is a dict of 1-D tensors of the row's own length L <= seq_length: ``tokens``,
    ``labels``, ``position_ids`` (int64) and ``loss_mask`` (float32). ``stats`` holds counts
    for logging: examples / truncated / dropped (when ``examples`` carries them), rows, tokens,
    ``packing_efficiency`` (real tokens / (rows x seq_length)) and ``padding_waste`` (the
    share of positions that would be padding were every row padded to seq_length).
    """

    def __init__(self, examples, seq_length: int, packing: bool, num_samples: Optional[int] = None,
                 seed: int = 1234):
        self.examples, self.seq_length, self.packing, self.seed = examples, seq_length, packing, seed
        lengths = getattr(examples, "lengths", None)
        if lengths is None:
            lengths = [len(ids) for ids, _ in examples]
        pieces = np.asarray(lengths, dtype=np.int64) - 1
        if len(pieces) == 0:
            raise MegaliteError("no SFT examples to train on (every example was dropped, or the data is empty)")
        if pieces.max() > seq_length or pieces.min() < 1:
            bad = int(np.argmax((pieces > seq_length) | (pieces < 1)))
            raise MegaliteError(f"SFT example {bad} has {pieces[bad] + 1} token ids; a row takes 2 .. "
                                f"{seq_length + 1} (seq_length + 1)")
        rows = pack_best_fit_decreasing(pieces, seq_length) if packing else [[i] for i in range(len(pieces))]
        self.row_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=self.row_ptr[1:])
        self.row_items = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(self.row_ptr[-1]))
        self.num_rows = len(rows)
        self.num_samples = self.num_rows if num_samples is None else int(num_samples)
        tokens = int(pieces.sum())
        efficiency = tokens / (self.num_rows * seq_length)
        counts = getattr(examples, "stats", None) or {"examples": len(pieces), "truncated": 0, "dropped": 0}
        self.stats = {**{k: counts.get(k, 0) for k in COUNTS}, "rows": self.num_rows, "tokens": tokens,
                      "packing_efficiency": efficiency, "padding_waste": 1.0 - efficiency}
        self._order: List = [-1, None]  # the current epoch and its permutation

    def __len__(self) -> int:
        return self.num_samples

    def summary(self) -> str:
        st = self.stats
        return (f"sft data: {st['examples']} examples ({st['truncated']} truncated, {st['dropped']} dropped without "
                f"a trainable token) in {st['rows']} rows | {st['tokens']} tokens | rows filled to "
                f"{st['packing_efficiency']:.1%} of --seq-length")

    def row_of(self, i: int) -> int:
        """The row sample ``i`` serves: epoch ``i // rows`` shuffled by ``seed + epoch``."""
        return epoch_shuffled(i, self.num_rows, self.num_samples, self.seed, self._order)

    def row_examples(self, row: int) -> np.ndarray:
        return self.row_items[self.row_ptr[row]:self.row_ptr[row + 1]]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        parts = [self.examples[int(k)] for k in self.row_examples(self.row_of(i))]
        ids = [np.asarray(x, dtype=np.int64) for x, _ in parts]
        return {
            "tokens": torch.from_numpy(np.concatenate([x[:-1] for x in ids])),
            "labels": torch.from_numpy(np.concatenate([x[1:] for x in ids])),
            "loss_mask": torch.from_numpy(np.concatenate([np.asarray(m[1:], dtype=np.float32) for _, m in parts])),
            "position_ids": torch.from_numpy(np.concatenate([np.arange(len(x) - 1, dtype=np.int64) for x in ids])),
        }


def collate_sft(rows: Sequence[Dict[str, torch.Tensor]], pad_to: Optional[int] = None, multiple_of: int = 1,
                pad_id: int = 0) -> Dict[str, torch.Tensor]:
    """[batch, L] tensors, right-padded to the longest row rounded up to ``multiple_of`` (or to
    exactly ``pad_to``). Padding has tokens ``pad_id``, loss_mask 0 and positions 0, 1, 2, ...: it
    starts a document of its own, so ``position_ids == 0`` marks every start. Positions without a
    loss (prompts, padding) are labelled IGNORE_INDEX: the output layer skips them."""
    longest = max(len(r["tokens"]) for r in rows)
    width = pad_to if pad_to is not None else -(-longest // multiple_of) * multiple_of
    if longest > width:
        raise MegaliteError(f"a row of {longest} tokens does not fit pad_to={width}")
    batch = {
        "tokens": torch.full((len(rows), width), pad_id, dtype=torch.int64),
        "labels": torch.full((len(rows), width), pad_id, dtype=torch.int64),
        "loss_mask": torch.zeros((len(rows), width), dtype=torch.float32),
        "position_ids": torch.arange(width, dtype=torch.int64).repeat(len(rows), 1),
    }
    for b, row in enumerate(rows):
        n = len(row["tokens"])
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            batch[key][b, :n] = row[key]
        batch["position_ids"][b, n:] -= n
    batch["labels"].masked_fill_(batch["loss_mask"] == 0, IGNORE_INDEX)  # the output layer skips them
    return batch


def split_validation(stores: Sequence[ExampleStore], fraction: float, seed: int):
    """(train indices, valid indices) per store: a seeded ``fraction`` of each store's examples
    (at least one, never all) goes to validation."""
    if not 0 <= fraction < 1:
        raise MegaliteError(f"--sft-valid-fraction {fraction} must be in [0, 1)")
    train, valid = [], []
    for n, store in enumerate(stores):
        order = np.random.default_rng([seed, n]).permutation(len(store))
        k = min(max(1, round(fraction * len(store))), len(store) - 1) if fraction > 0 else 0
        valid.append(np.sort(order[:k]))
        train.append(np.sort(order[k:]))
    return train, valid


def mix(stores: Sequence[ExampleStore], indices: Sequence[np.ndarray], weights: Sequence[Optional[float]],
        seed: int) -> ExampleSet:
    """All selected examples once; or, with weights, ``round(w / sum(w) * total)`` examples from
    each source (its examples in seeded order, repeated when up-sampled)."""
    if weights[0] is None:
        picks = [np.stack([np.full(len(ix), s), ix], 1) for s, ix in enumerate(indices)]
    else:
        total, weight_sum = sum(len(ix) for ix in indices), sum(weights)
        picks = []
        for s, (ix, w) in enumerate(zip(indices, weights)):
            count = int(round(w / weight_sum * total))
            if count and not len(ix):
                raise MegaliteError(f"{stores[s].name}: no examples left to draw a weight of {w} from")
            order = np.random.default_rng([seed, s]).permutation(ix) if len(ix) else ix
            chosen = np.resize(order, count) if count else np.zeros(0, np.int64)
            picks.append(np.stack([np.full(count, s), chosen], 1))
    return ExampleSet(stores, np.concatenate(picks) if picks else np.zeros((0, 2), np.int64))


def build_sft_datasets(sft_cfg, seq_length: int, tokenizer, train_samples: Optional[int],
                       valid_samples: Optional[int], seed: int, workers: Optional[int] = None,
                       chat_template: Optional[str] = None):
    """(train SFTDataset, validation SFTDataset or None) from an ``SFTConfig`` and ``--chat-template``."""
    if not sft_cfg.sft_data:
        raise MegaliteError("--sft-data is required")
    if sft_cfg.sft_valid_data and sft_cfg.sft_valid_fraction:
        raise MegaliteError("give --sft-valid-data or --sft-valid-fraction, not both")
    sources, stores = load_sources(sft_cfg, sft_cfg.sft_data, "--sft-data", seq_length, tokenizer, workers,
                                   chat_template)
    train_idx, valid_idx = split_validation(stores, sft_cfg.sft_valid_fraction or 0.0, seed)
    train = SFTDataset(mix(stores, train_idx, [s.weight for s in sources], seed), seq_length, sft_cfg.packing,
                       train_samples, seed)
    if sft_cfg.sft_valid_data:
        vsources, vstores = load_sources(sft_cfg, sft_cfg.sft_valid_data, "--sft-valid-data", seq_length,
                                         tokenizer, workers, chat_template)
        vset = mix(vstores, [np.arange(len(s)) for s in vstores], [s.weight for s in vsources], seed)
    elif any(len(ix) for ix in valid_idx):
        vset = mix(stores, valid_idx, [None] * len(stores), seed)
    else:
        return train, None
    return train, SFTDataset(vset, seq_length, sft_cfg.packing, valid_samples, seed)
