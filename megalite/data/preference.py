"""DPO preference pairs: files -> (prompt, chosen, rejected) token ids -> paired training rows.

Records come in trl's formats, detected per record:

- standard: ``prompt``, ``chosen``, ``rejected`` strings;
- conversational: the same keys holding message lists (``[{role, content}]``), rendered with
  the run's chat template, the prompt with the generation prompt;

or as a LLaMA-Factory ``dataset_info.json`` entry with ``"ranking": true`` (alpaca: prompt /
query / chosen / rejected columns; sharegpt: a messages column and chosen / rejected messages),
which become conversational pairs.

Tokenization follows trl 1.x's DPOTrainer: standard text is tokenized as ``tokenizer(text)``
(with the special tokens its post-processor adds) after EOS is appended to each completion that
does not end with it; conversations as ``apply_chat_template(..., tokenize=True)``. The prompt
and both prompt+completion sequences are tokenized whole, and each completion starts where the
prompt's ids and the pair's ids first differ (their common prefix).

Length policy, counted in ``stats``: ``--max-prompt-length`` keeps the last N prompt tokens
(``prompt_truncated``); a pair whose prompt fills a whole row (``seq_length + 1`` ids) has no
completion token left and is dropped (``dropped``, as trl drops it); a longer sequence keeps its
first ``seq_length + 1`` ids (``truncated``, trl's ``keep_start`` with ``max_length =
seq_length + 1``). Bad records (a missing key, an empty prompt, chosen equal to rejected) stop
with one error naming the file and the record.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megalite.data.chat import render_chat, resolve_template
from megalite.data.sft import collate_sft, epoch_shuffled
from megalite.data.sft_formats import (SHAREGPT_COLUMNS, SHAREGPT_TAGS, ROLE_OF_TAG, ALPACA_COLUMNS, SFTSource,
                                       from_alpaca, from_sharegpt, read_records, resolve_sources)
from megalite.errors import MegaliteError

KEYS = ("prompt", "chosen", "rejected")
COUNTS = ("pairs", "prompt_truncated", "truncated", "dropped")
Pair = Dict[str, object]  # prompt / chosen / rejected: strings, or message lists


# -- records -> pairs ------------------------------------------------------------------------------
def load_pairs(source: SFTSource) -> List[Tuple[str, int, Pair]]:
    """(file, record index, checked pair) for every record of the source."""
    out = []
    for path in source.files():
        records = read_records(path)
        if not records:
            raise MegaliteError(f"{path}: holds no records")
        for i, record in enumerate(records):
            try:
                pair = _ranking_pair(source, record) if source.formatting else {k: record.get(k) for k in KEYS}
                if record.get("margin") is not None:  # reward models: the score gap this pair asks for
                    pair["margin"] = record["margin"]
                check_pair(pair)
            except MegaliteError as e:
                raise MegaliteError(f"{path}: record {i}: {e}") from None
            out.append((path, i, pair))
    return out


def check_pair(pair: Pair) -> None:
    missing = [k for k in KEYS if pair.get(k) is None]
    if missing:
        raise MegaliteError(f"missing {', '.join(map(repr, missing))} (a pair needs prompt, chosen and rejected)")
    kinds = {type(pair[k]) for k in KEYS}
    if kinds not in ({str}, {list}):
        raise MegaliteError("prompt, chosen and rejected must all be strings or all be message lists")
    if kinds == {list}:
        for k in KEYS:
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in pair[k]):
                raise MegaliteError(f"{k!r}: every message needs a string 'role' and 'content'")
    if not _content(pair["prompt"]).strip():
        raise MegaliteError("empty prompt")
    for k in ("chosen", "rejected"):
        if not _content(pair[k]).strip():
            raise MegaliteError(f"empty {k!r} completion")
    if pair["chosen"] == pair["rejected"]:
        raise MegaliteError("chosen is identical to rejected (the pair carries no preference)")
    margin = pair.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not np.isfinite(margin):
        raise MegaliteError(f"'margin' must be a finite number, found {margin!r}")


def _content(value) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def _ranking_pair(source: SFTSource, record: dict) -> Pair:
    """A LLaMA-Factory ranking record as a conversational pair."""
    if source.formatting == "alpaca":
        columns = {**ALPACA_COLUMNS, "chosen": "chosen", "rejected": "rejected", **source.columns}
        for k in ("chosen", "rejected"):
            if not isinstance(record.get(columns[k]), str):
                raise MegaliteError(f"column {columns[k]!r} must be a string")
        prompt = from_alpaca(record, {**columns, "response": columns["chosen"]}, {})[:-1]
        return {"prompt": prompt, **{k: [{"role": "assistant", "content": record[columns[k]]}]
                                     for k in ("chosen", "rejected")}}
    columns = {**SHAREGPT_COLUMNS, "chosen": "chosen", "rejected": "rejected", **source.columns}
    tags = {**SHAREGPT_TAGS, **source.tags}
    pair = {"prompt": from_sharegpt(record, columns, tags)}
    roles = {tags[t]: role for t, role in ROLE_OF_TAG.items() if tags.get(t)}
    for k in ("chosen", "rejected"):
        m = record.get(columns[k])
        if not isinstance(m, dict) or roles.get(m.get(tags["role_tag"])) != "assistant":
            raise MegaliteError(f"column {columns[k]!r} must be one assistant message")
        pair[k] = [{"role": "assistant", "content": m.get(tags["content_tag"])}]
    return pair


# -- pairs -> token ids ----------------------------------------------------------------------------
def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def sequence_ids(tokenizer, template: str, prompt, completion) -> List[int]:
    """Prompt + completion tokenized whole, as trl's trainers do: text with EOS appended to a
    completion that does not end with it, as ``tokenizer(text)`` (with its special tokens);
    messages rendered with the template (no generation prompt), without added special tokens."""
    if isinstance(prompt, str):
        eos = tokenizer.id_to_token(tokenizer.eod)
        return tokenizer.encode_text(prompt + (completion if completion.endswith(eos) else completion + eos))
    return tokenizer.encode(render_chat(template, prompt + completion, False, **tokenizer.special_tokens))


def tokenize_pair(tokenizer, template: str, pair: Pair) -> Tuple[List[int], List[int], List[int]]:
    """(prompt ids, chosen ids, rejected ids) exactly as trl's DPOTrainer tokenizes the pair."""
    if isinstance(pair["prompt"], str):
        prompt = tokenizer.encode_text(pair["prompt"])
    else:
        prompt = tokenizer.encode(render_chat(template, pair["prompt"], True, **tokenizer.special_tokens))
    chosen, rejected = (sequence_ids(tokenizer, template, pair["prompt"], pair[k]) for k in ("chosen", "rejected"))
    n = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
    return list(prompt[:n]), list(chosen[n:]), list(rejected[n:])


def fit_pair(prompt: List[int], chosen: List[int], rejected: List[int], seq_length: int,
             max_prompt_length: Optional[int], stats: Dict[str, int]):
    """The two sequences ``(ids, completion mask)`` of a pair under the length policy of the
    module docstring, or None when the pair is dropped; ``stats`` counts what happened."""
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
        stats["prompt_truncated"] += 1
    width = seq_length + 1
    if len(prompt) >= width:
        stats["dropped"] += 1
        return None
    if len(prompt) + max(len(chosen), len(rejected)) > width:
        stats["truncated"] += 1
    stats["pairs"] += 1
    return [(np.asarray(prompt + c, dtype=np.int64)[:width],
             np.asarray([0] * len(prompt) + [1] * len(c), dtype=bool)[:width]) for c in (chosen, rejected)]


# -- training rows ---------------------------------------------------------------------------------
class PreferenceDataset(torch.utils.data.Dataset):
    """``num_samples`` pairs, epochs over the pairs each shuffled by ``seed + epoch`` (sample
    ``i`` is the same pair in every run, so resuming is exact). ``ds[i]`` holds the chosen and
    rejected rows (``tokens``, ``labels``, ``loss_mask`` = completion tokens among the labels)
    and ``index``, the pair's position in the set (what precomputed reference scores are keyed by)."""

    def __init__(self, pairs, num_samples: Optional[int] = None, seed: int = 1234,
                 stats: Optional[Dict[str, int]] = None):
        if not pairs:
            raise MegaliteError("no preference pairs to train on (every pair was dropped, or the data is empty)")
        self.pairs, self.seed = pairs, seed
        self.num_samples = len(pairs) if num_samples is None else int(num_samples)
        self.stats = stats or {"pairs": len(pairs)}
        self._order = [-1, None]

    def __len__(self) -> int:
        return self.num_samples

    def summary(self) -> str:
        st = self.stats
        return (f"preference data: {st.get('pairs', len(self.pairs))} pairs ({st.get('prompt_truncated', 0)} prompts "
                f"cut to --max-prompt-length, {st.get('truncated', 0)} pairs cut to --seq-length, "
                f"{st.get('dropped', 0)} dropped: the prompt fills a row)")

    def pair_of(self, i: int) -> int:
        return epoch_shuffled(i, len(self.pairs), self.num_samples, self.seed, self._order)

    def __getitem__(self, i: int) -> Dict[str, object]:
        k = self.pair_of(i)
        return {**pair_rows(self.pairs[k]), "index": k}


def pair_rows(fitted) -> Dict[str, Dict[str, torch.Tensor]]:
    """The chosen and rejected training rows of a fitted pair."""
    rows = {}
    for name, (ids, mask) in zip(("chosen", "rejected"), fitted):
        ids = torch.from_numpy(ids)
        rows[name] = {"tokens": ids[:-1], "labels": ids[1:], "loss_mask": torch.from_numpy(mask[1:].astype(np.float32)),
                      "position_ids": torch.arange(len(ids) - 1)}
    return rows


def collate_pairs(items, pad_to: Optional[int] = None, multiple_of: int = 1) -> Dict[str, torch.Tensor]:
    """One micro-batch of n pairs: rows 0..n-1 chosen, n..2n-1 rejected (trl's layout), padded
    like SFT rows; ``pairs`` (n ones) and ``chosen_tokens`` are what the DPO losses are
    normalised by (their global sums)."""
    batch = collate_sft([it["chosen"] for it in items] + [it["rejected"] for it in items], pad_to, multiple_of)
    batch.pop("position_ids")
    if all("index" in it for it in items):
        batch["pair_index"] = torch.tensor([it["index"] for it in items], dtype=torch.int64)
    batch["pairs"] = torch.ones(len(items))
    batch["chosen_tokens"] = batch["loss_mask"][:len(items)].sum(1)
    return batch


def tokenized_pairs(dpo_cfg, chat_template: Optional[str], tokenizer, spec: Optional[str], tokenize):
    """(pair, ``tokenize(tokenizer, template, pair)``) for every record of ``spec`` (default
    ``--pref-data``); errors name the file and the record."""
    spec = spec or dpo_cfg.pref_data
    if not spec:
        raise MegaliteError("--pref-data is required")
    flag = "--pref-data" if spec == dpo_cfg.pref_data else "--pref-valid-data"
    template = resolve_template(chat_template, tokenizer)
    for source in resolve_sources(spec, dpo_cfg.pref_dataset_dir, flag, ranking=True):
        for path, i, pair in load_pairs(source):
            try:
                yield pair, tokenize(tokenizer, template, pair)
            except MegaliteError as e:
                raise MegaliteError(f"{path}: record {i}: {e}") from None


def build_pairs(dpo_cfg, chat_template: Optional[str], seq_length: int, tokenizer, spec: Optional[str] = None):
    """(fitted pairs, counts) of every source of ``spec`` (default ``--pref-data``)."""
    stats = {k: 0 for k in COUNTS}
    pairs = []
    for _, ids in tokenized_pairs(dpo_cfg, chat_template, tokenizer, spec, tokenize_pair):
        fitted = fit_pair(*ids, seq_length, dpo_cfg.max_prompt_length, stats)
        if fitted is not None:
            pairs.append(fitted)
    return pairs, stats
