"""Reward-model pairs: the DPO preference files -> (chosen ids, rejected ids, margin) -> rows scored whole.

Records, formats and their checks are megalite.data.preference's (standard or conversational pairs,
LLaMA-Factory ranking entries), plus an optional numeric ``margin`` per record: the score gap the pair
asks for (0 without one). Tokenization follows trl 1.x's RewardTrainer: the prompt is joined to each
completion and the whole sequence tokenized (``preference.sequence_ids``: text with EOS appended and the
tokenizer's special tokens, messages through the chat template). A pair with a sequence longer than
``--seq-length`` tokens is dropped and counted (trl's ``max_length`` filter): cutting it would move the
token its score is read at. The pairs are cached like DPO's (``cache/rm``: the two sequences of pair k
as documents 2k and 2k + 1, their score positions and margins in arrays of the entry).

A row's score is read at its last token that is not the pad token (``score_index``), exactly where
Hugging Face's ``...ForSequenceClassification`` reads it given ``pad_token_id``; the pad token is the
tokenizer's, else its EOS (trl's choice), so with EOS as pad an appended EOS is not the scored token.
"""

from typing import Dict, List, Optional

import numpy as np
import torch

from megalite.data.items import ItemDataset, cached_items
from megalite.data.preference import Pairs, load_pairs, pref_sources, sequence_ids
from megalite.errors import MegaliteError

COUNTS = ("pairs", "dropped")


def pad_id_of(tokenizer) -> int:
    """The pad token a reward model's score position is defined by (the HF export's pad_token_id)."""
    return tokenizer.pad if tokenizer.pad is not None else tokenizer.eod


def score_index(ids: np.ndarray, pad_id: int) -> int:
    """The last position whose token is not ``pad_id`` (0 when there is none, as in HF)."""
    kept = np.flatnonzero(np.asarray(ids) != pad_id)
    return int(kept[-1]) if len(kept) else 0


def tokenize_reward_pair(tokenizer, template: str, pair) -> List[List[int]]:
    """[chosen ids, rejected ids]: prompt + completion tokenized whole, as trl's RewardTrainer does."""
    return [sequence_ids(tokenizer, template, pair["prompt"], pair[k]) for k in ("chosen", "rejected")]


class ScoredPairs(Pairs):
    """Cached reward pairs: ``pairs[k]`` is ``{"chosen": (ids, score index), "rejected": (...),
    "margin": float}`` (documents 2k and 2k + 1 of their store; index and margin in its arrays)."""

    def __getitem__(self, k: int) -> Dict[str, object]:
        store, j = self.locate(k)
        index, margin = store.array("score_index"), store.array("margin")
        return {"chosen": (store[j][0], int(index[j])), "rejected": (store[j + 1][0], int(index[j + 1])),
                "margin": float(margin[j])}


def build_reward_pairs(dpo_cfg, chat_template: Optional[str], seq_length: int, tokenizer,
                       spec: Optional[str] = None):
    """(ScoredPairs, counts) of every source of ``spec`` (default ``--pref-data``), each source's
    pairs cached under ``cache/rm``."""
    if dpo_cfg.max_prompt_length is not None:
        raise MegaliteError("--max-prompt-length does not apply to reward models (--pref-method rm): prompt and "
                            "completion are scored whole, and pairs longer than --seq-length are dropped")
    template, sources = pref_sources(dpo_cfg, chat_template, tokenizer, spec)
    pad = pad_id_of(tokenizer)

    def fit(pair, ids, stats, arrays):
        if max(map(len, ids)) > seq_length:
            stats["dropped"] += 1
            return []
        stats["pairs"] += 1
        rows = [np.asarray(x, dtype=np.int64) for x in ids]
        for row in rows:
            arrays["score_index"].append(score_index(row, pad))
            arrays["margin"].append(float(pair.get("margin", 0.0)))
        return [(row, np.ones(len(row), dtype=bool)) for row in rows]

    stores = [cached_items("rm", source, tokenizer, template, seq_length, dpo_cfg.pref_cache_path,
                           {"kind": "rm", "pad": pad}, load_pairs, tokenize_reward_pair, fit, COUNTS,
                           arrays=("score_index", "margin"))
              for source in sources]
    return ScoredPairs(stores), {k: sum(st.stats[k] for st in stores) for k in COUNTS}


class RewardPairs(ItemDataset):
    """Reward-model pairs: a sample is the pair itself (ids and score positions, margin)."""

    noun, count = "reward pairs", "pairs"

    def summary(self) -> str:
        return (f"reward pairs: {len(self.items)} pairs{self.held_out_note()}; {self.stats.get('dropped', 0)} "
                "dropped: longer than --seq-length")

    def item(self, k: int, i: Optional[int] = None) -> Dict[str, object]:
        return self.items[k]


def collate_reward_pairs(items, pad_to: Optional[int] = None, multiple_of: int = 1) -> Dict[str, torch.Tensor]:
    """One micro-batch of n pairs as 2n rows, chosen first (trl's layout), right-padded to the
    longest row rounded up to ``multiple_of`` (or to ``pad_to``): ``tokens``, ``loss_mask`` (the
    real tokens: what the trainer counts), ``score_index``, and per pair ``margin`` and ``pairs``
    (ones: the loss is a mean over the global batch's pairs)."""
    rows = [it["chosen"] for it in items] + [it["rejected"] for it in items]
    longest = max(len(ids) for ids, _ in rows)
    width = pad_to if pad_to is not None else -(-longest // multiple_of) * multiple_of
    if longest > width:
        raise MegaliteError(f"a row of {longest} tokens does not fit pad_to={width}")
    tokens = torch.zeros((len(rows), width), dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for b, (ids, _) in enumerate(rows):
        tokens[b, :len(ids)] = torch.from_numpy(ids)
        mask[b, :len(ids)] = 1.0
    return {"tokens": tokens, "loss_mask": mask,
            "score_index": torch.tensor([index for _, index in rows], dtype=torch.int64),
            "margin": torch.tensor([it["margin"] for it in items], dtype=torch.float32),
            "pairs": torch.ones(len(items))}
