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

Each source's fitted pairs are cached (``megalite.data.items.cached_items``) like SFT examples: a
``.bin/.idx`` entry under ``<source folder>/cache/pref`` (or ``--pref-cache-path``) named by a
hash of the files, tokenizer, template and lengths, holding the chosen and rejected sequences of
pair k as documents 2k and 2k + 1; rank 0 builds it once, later runs and the other ranks read it.

Length policy, counted in ``stats``: ``--max-prompt-length`` keeps the last N prompt tokens
(``prompt_truncated``); a pair whose prompt fills a whole row (``seq_length + 1`` ids) has no
completion token left and is dropped (``dropped``, as trl drops it); a longer sequence keeps its
first ``seq_length + 1`` ids (``truncated``, trl's ``keep_start`` with ``max_length =
seq_length + 1``). Bad records (a missing key, an empty prompt, chosen equal to rejected) stop
with one error naming the file and the record.
"""

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megalite.data.chat import render_chat, resolve_template
from megalite.data.items import ItemDataset, StoreItems, cached_items
from megalite.data.sft import collate_sft
from megalite.data.sft_formats import (
    ALPACA_COLUMNS,
    ROLE_OF_TAG,
    SHAREGPT_COLUMNS,
    SHAREGPT_TAGS,
    SFTSource,
    from_alpaca,
    from_sharegpt,
    read_records,
    resolve_sources,
)
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
    if not text_of(pair["prompt"]).strip():
        raise MegaliteError("empty prompt")
    for k in ("chosen", "rejected"):
        if not text_of(pair[k]).strip():
            raise MegaliteError(f"empty {k!r} completion")
    if pair["chosen"] == pair["rejected"]:
        raise MegaliteError("chosen is identical to rejected (the pair carries no preference)")
    margin = pair.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not np.isfinite(margin):
        raise MegaliteError(f"'margin' must be a finite number, found {margin!r}")


def text_of(value) -> str:
    """The text of a string or of a message list's contents (what emptiness is checked on)."""
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


def tokenize_completions(tokenizer, template: str, prompt, completions) -> Tuple[List[int], List[List[int]]]:
    """(prompt ids, [completion ids]) as trl's DPO and KTO trainers tokenize a prompt and its
    completions: each prompt+completion is tokenized whole and the prompt is cut where the ids of
    the prompt and of every prompt+completion first differ."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer.encode_text(prompt)
    else:
        prompt_ids = tokenizer.encode(render_chat(template, prompt, True, **tokenizer.special_tokens))
    full = [sequence_ids(tokenizer, template, prompt, c) for c in completions]
    n = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return list(prompt_ids[:n]), [list(ids[n:]) for ids in full]


def tokenize_pair(tokenizer, template: str, pair: Pair) -> Tuple[List[int], List[int], List[int]]:
    """(prompt ids, chosen ids, rejected ids) exactly as trl's DPOTrainer tokenizes the pair."""
    prompt, (chosen, rejected) = tokenize_completions(tokenizer, template, pair["prompt"],
                                                      [pair["chosen"], pair["rejected"]])
    return prompt, chosen, rejected


def fit_prompt(prompt: List[int], longest: int, seq_length: int, max_prompt_length: Optional[int],
               stats: Dict[str, int]) -> Optional[List[int]]:
    """The prompt under the length policy of the module docstring (``longest``: its longest
    completion), or None when the prompt fills a row and the example is dropped; ``stats``
    counts ``prompt_truncated``, ``dropped`` and ``truncated``."""
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
        stats["prompt_truncated"] += 1
    if len(prompt) >= seq_length + 1:
        stats["dropped"] += 1
        return None
    if len(prompt) + longest > seq_length + 1:
        stats["truncated"] += 1
    return prompt


def fit_sequence(prompt: List[int], completion: List[int], seq_length: int):
    """``(ids, completion mask)`` of prompt + completion, its first ``seq_length + 1`` ids."""
    width = seq_length + 1
    return (np.asarray(prompt + completion, dtype=np.int64)[:width],
            np.asarray([0] * len(prompt) + [1] * len(completion), dtype=bool)[:width])


def fit_pair(prompt: List[int], chosen: List[int], rejected: List[int], seq_length: int,
             max_prompt_length: Optional[int], stats: Dict[str, int]):
    """The two sequences ``(ids, completion mask)`` of a pair under the length policy of the
    module docstring, or None when the pair is dropped; ``stats`` counts what happened."""
    prompt = fit_prompt(prompt, max(len(chosen), len(rejected)), seq_length, max_prompt_length, stats)
    if prompt is None:
        return None
    stats["pairs"] += 1
    return [fit_sequence(prompt, c, seq_length) for c in (chosen, rejected)]


# -- training rows ---------------------------------------------------------------------------------
class PreferenceDataset(ItemDataset):
    """DPO pairs: a sample holds the chosen and rejected rows (``tokens``, ``labels``,
    ``loss_mask`` = completion tokens among the labels), ``index`` (the pair's position in the
    set) and ``held_out``."""

    noun, count = "preference pairs", "pairs"

    def summary(self) -> str:
        st = self.stats
        return (f"preference data: {len(self.items)} pairs{self.held_out_note()}; {st.get('prompt_truncated', 0)} "
                f"prompts cut to --max-prompt-length, {st.get('truncated', 0)} pairs cut to --seq-length, "
                f"{st.get('dropped', 0)} dropped: the prompt fills a row")

    def item(self, k: int, i: Optional[int] = None) -> Dict[str, object]:
        """Pair ``k`` of the set, as a sample."""
        return {**pair_rows(self.items[k]), "index": k, "held_out": self.held_out}


def pair_rows(fitted) -> Dict[str, Dict[str, torch.Tensor]]:
    """The chosen and rejected training rows of a fitted pair."""
    return {name: training_row(*seq) for name, seq in zip(("chosen", "rejected"), fitted)}


def training_row(ids: np.ndarray, mask: np.ndarray) -> Dict[str, torch.Tensor]:
    """A row of ``fit_sequence``'s output: inputs, next-token labels, completion-label mask."""
    ids = torch.from_numpy(ids)
    return {"tokens": ids[:-1], "labels": ids[1:], "loss_mask": torch.from_numpy(mask[1:].astype(np.float32)),
            "position_ids": torch.arange(len(ids) - 1)}


def collate_pairs(items, pad_to: Optional[int] = None, multiple_of: int = 1) -> Dict[str, torch.Tensor]:
    """One micro-batch of n pairs: rows 0..n-1 chosen, n..2n-1 rejected (trl's layout), padded
    like SFT rows; ``pairs`` (n ones) and ``chosen_tokens`` / ``rejected_tokens`` are what the
    DPO losses and metrics are normalised by (their global sums); ``pair_index`` and
    ``held_out`` find precomputed reference scores."""
    batch = collate_sft([it["chosen"] for it in items] + [it["rejected"] for it in items], pad_to, multiple_of)
    batch.pop("position_ids")
    batch["pair_index"] = torch.tensor([it["index"] for it in items], dtype=torch.int64)
    batch["held_out"] = torch.tensor([int(it["held_out"]) for it in items])
    batch["pairs"] = torch.ones(len(items))
    batch["chosen_tokens"] = batch["loss_mask"][:len(items)].sum(1)
    batch["rejected_tokens"] = batch["loss_mask"][len(items):].sum(1)
    return batch


class Pairs(StoreItems):
    """Fitted pairs: ``pairs[k]`` is ``[(chosen ids, completion mask), (rejected ids, completion mask)]``
    (documents 2k and 2k + 1 of their store)."""

    per_item = 2

    def __getitem__(self, k: int):
        store, j = self.locate(k)
        return [store[j], store[j + 1]]


def pref_sources(dpo_cfg, chat_template: Optional[str], tokenizer, spec: Optional[str] = None, resolve=None):
    """(the chat template, the sources) of ``spec`` (default ``--pref-data``); ``resolve(spec,
    dataset_dir, flag)`` finds the sources (default: files or dataset_info.json ranking entries)."""
    spec = spec or dpo_cfg.pref_data
    if not spec:
        raise MegaliteError("--pref-data is required")
    flag = "--pref-data" if spec == dpo_cfg.pref_data else "--pref-valid-data"
    resolve = resolve or functools.partial(resolve_sources, ranking=True)
    return resolve_template(chat_template, tokenizer), resolve(spec, dpo_cfg.pref_dataset_dir, flag)


def build_pairs(dpo_cfg, chat_template: Optional[str], seq_length: int, tokenizer, spec: Optional[str] = None):
    """(Pairs, counts) of every source of ``spec`` (default ``--pref-data``), each source's fitted
    pairs cached under ``cache/pref`` (the chosen and rejected sequences of pair k as documents 2k
    and 2k + 1)."""
    template, sources = pref_sources(dpo_cfg, chat_template, tokenizer, spec)
    max_prompt = dpo_cfg.max_prompt_length

    def fit(pair, ids, stats, arrays):
        return fit_pair(*ids, seq_length, max_prompt, stats) or []

    stores = [cached_items("pref", source, tokenizer, template, seq_length, dpo_cfg.pref_cache_path,
                           {"max_prompt_length": max_prompt}, load_pairs, tokenize_pair, fit, COUNTS)
              for source in sources]
    stats = {k: sum(st.stats[k] for st in stores) for k in COUNTS}
    return Pairs(stores), stats
