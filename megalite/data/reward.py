"""Reward-model pairs: the DPO preference files -> (chosen ids, rejected ids, margin) -> rows scored whole.

Records, formats and their checks are megalite.data.preference's (standard or conversational pairs,
LLaMA-Factory ranking entries), plus an optional numeric ``margin`` per record: the score gap the pair
asks for (0 without one). Tokenization follows trl 1.x's RewardTrainer: the prompt is joined to each
completion and the whole sequence tokenized (``preference.sequence_ids``: text with EOS appended and the
tokenizer's special tokens, messages through the chat template). A pair with a sequence longer than
``--seq-length`` tokens is dropped and counted (trl's ``max_length`` filter): cutting it would move the
token its score is read at.

A row's score is read at its last token that is not the pad token (``score_index``), exactly where
Hugging Face's ``...ForSequenceClassification`` reads it given ``pad_token_id``; the pad token is the
tokenizer's, else its EOS (trl's choice), so with EOS as pad an appended EOS is not the scored token.
"""

from typing import Dict, List, Optional

import numpy as np
import torch

from megalite.data.preference import PreferenceDataset, pref_sources, sequence_ids, tokenized
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


def build_reward_pairs(dpo_cfg, chat_template: Optional[str], seq_length: int, tokenizer,
                       spec: Optional[str] = None):
    """(pairs, counts) of every record of ``spec`` (default ``--pref-data``); a pair is
    ``{"chosen": (ids, score index), "rejected": (...), "margin": float}``."""
    if dpo_cfg.max_prompt_length is not None:
        raise MegaliteError("--max-prompt-length does not apply to reward models (--stage rm): prompt and completion "
                            "are scored whole, and pairs longer than --seq-length are dropped")
    pad = pad_id_of(tokenizer)
    stats = {k: 0 for k in COUNTS}
    pairs = []
    template, sources = pref_sources(dpo_cfg, chat_template, tokenizer, spec)
    for pair, ids in (item for source in sources for item in tokenized(source, tokenizer, template,
                                                                       tokenize_reward_pair)):
        if max(map(len, ids)) > seq_length:
            stats["dropped"] += 1
            continue
        stats["pairs"] += 1
        rows = [np.asarray(x, dtype=np.int64) for x in ids]
        pairs.append({"chosen": (rows[0], score_index(rows[0], pad)), "rejected": (rows[1], score_index(rows[1], pad)),
                      "margin": float(pair.get("margin", 0.0))})
    return pairs, stats


class RewardPairs(PreferenceDataset):
    """PreferenceDataset's epochs and order over reward pairs; ``ds[i]`` is the pair itself."""

    def summary(self) -> str:
        return (f"reward pairs: {self.stats.get('pairs', len(self.pairs))} pairs ({self.stats.get('dropped', 0)} "
                f"dropped: longer than --seq-length)")

    def __getitem__(self, i: int) -> Dict[str, object]:
        return self.pairs[self.pair_of(i)]


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
