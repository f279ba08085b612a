"""KTO's unpaired preference data: files -> (prompt, completion, label) -> token ids -> rows.

Records come in trl's unpaired format, detected per record:

- standard: ``prompt`` and ``completion`` strings and a boolean ``label`` (true: desirable);
- conversational: ``prompt`` and ``completion`` message lists, rendered with the run's chat
  template (the prompt with the generation prompt);

or as a LLaMA-Factory ``dataset_info.json`` entry whose ``columns`` name a ``kto_tag`` (sharegpt:
the messages column, the last message the completion; alpaca: prompt / query / response), which
become conversational examples labelled by the ``kto_tag`` column. Paired records (``prompt`` /
``chosen`` / ``rejected``) are unpaired as trl's ``unpair_preference_dataset`` does (``unpair``).

Tokenization is trl 1.x's KTOTrainer's, the same rules as DPO's (``preference.tokenize_completions``),
and so is the length policy (``preference.fit_prompt``): counted prompt cuts, drops and cuts to
``--seq-length + 1`` ids. Each source's fitted examples are cached as DPO's pairs are
(``build_examples``, ``Examples``), their labels in an array file of the cache entry.

KL rows (trl's KL estimate): a micro-batch of n examples also carries n mismatched sequences,
example i's prompt followed by the completion of example i - 1 of the same micro-batch (example 0
takes example n - 1's): (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}). trl builds exactly these by
rotating the completions of each ``per_device_train_batch_size`` block of its (sequentially
sampled) data set; here the rotation is over the micro-batch itself, so the rows are trl's
whenever trl's per-device batch holds the examples of our micro-batch, in the same order.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from megalite.data.items import ItemDataset, StoreItems, cached_items
from megalite.data.preference import (
    check_pair,
    fit_prompt,
    fit_sequence,
    pref_sources,
    text_of,
    tokenize_completions,
    training_row,
)
from megalite.data.sft import collate_sft
from megalite.data.sft_examples import ExampleStore
from megalite.data.sft_formats import (
    ALPACA_COLUMNS,
    SHAREGPT_COLUMNS,
    SHAREGPT_TAGS,
    SFTSource,
    from_alpaca,
    from_sharegpt,
    read_records,
    resolve_sources,
)
from megalite.errors import MegaliteError

KEYS = ("prompt", "completion", "label")
PAIR_KEYS = ("prompt", "chosen", "rejected")
UNPAIR_BLOCK = 1000  # pairs per batch of trl's unpair_preference_dataset (datasets.map's default batch size)
COUNTS = ("examples", "desirable", "prompt_truncated", "truncated", "dropped")
Example = Dict[str, object]  # prompt / completion: strings or message lists; label: bool


# -- records -> examples ---------------------------------------------------------------------------
def load_examples(source: SFTSource) -> List[Tuple[str, int, Example]]:
    """(file, record index, checked example) for every record of the source; paired records
    (``prompt`` / ``chosen`` / ``rejected``, detected on the source's first record as trl does)
    are unpaired (``unpair``)."""
    records = []
    for path in source.files():
        found = read_records(path)
        if not found:
            raise MegaliteError(f"{path}: holds no records")
        records += [(path, i, record) for i, record in enumerate(found)]
    paired = not source.formatting and all(k in records[0][2] for k in ("chosen", "rejected"))
    out = []
    for path, i, record in records:
        try:
            if paired:
                example = {k: record.get(k) for k in PAIR_KEYS}
                check_pair(example)
            else:
                example = _tagged_example(source, record) if source.formatting else {k: record.get(k) for k in KEYS}
                check_example(example)
        except MegaliteError as e:
            raise MegaliteError(f"{path}: record {i}: {e}") from None
        out.append((path, i, example))
    return unpair(out) if paired else out


def unpair(pairs: List[Tuple[str, int, dict]]) -> List[Tuple[str, int, Example]]:
    """trl's ``unpair_preference_dataset``: each pair becomes a desirable example (its chosen
    completion) and an undesirable one (its rejected), in trl's order: per block of 1000 pairs (the
    ``datasets.map`` batch it runs in), the block's chosen examples, then its rejected ones."""
    out = []
    for start in range(0, len(pairs), UNPAIR_BLOCK):
        block = pairs[start:start + UNPAIR_BLOCK]
        for side, label in (("chosen", True), ("rejected", False)):
            out += [(path, i, {"prompt": p["prompt"], "completion": p[side], "label": label}) for path, i, p in block]
    return out


def check_example(example: Example) -> None:
    missing = [k for k in KEYS if example.get(k) is None]
    if missing:
        raise MegaliteError(f"missing {', '.join(map(repr, missing))} (an example needs prompt, completion and "
                            "label; or give pairs: prompt, chosen and rejected)")
    if not isinstance(example["label"], bool):
        raise MegaliteError(f"'label' must be true or false, got {example['label']!r}")
    kinds = {type(example[k]) for k in ("prompt", "completion")}
    if kinds not in ({str}, {list}):
        raise MegaliteError("prompt and completion must both be strings or both be message lists")
    if kinds == {list}:
        for k in ("prompt", "completion"):
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in example[k]):
                raise MegaliteError(f"{k!r}: every message needs a string 'role' and 'content'")
    for k in ("prompt", "completion"):
        if not text_of(example[k]).strip():
            raise MegaliteError(f"empty {k}")


def _tagged_example(source: SFTSource, record: dict) -> Example:
    """A LLaMA-Factory record with a ``kto_tag`` column as a conversational example."""
    tag = source.columns["kto_tag"]
    if source.formatting == "alpaca":
        messages = from_alpaca(record, {**ALPACA_COLUMNS, **source.columns}, {})
    else:
        messages = from_sharegpt(record, {**SHAREGPT_COLUMNS, **source.columns}, {**SHAREGPT_TAGS, **source.tags})
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise MegaliteError("the last message must be the assistant's completion")
    return {"prompt": messages[:-1], "completion": messages[-1:], "label": record.get(tag)}


def resolve_unpaired_sources(spec: str, dataset_dir: Optional[str], flag: str) -> List[SFTSource]:
    """The sources of ``spec``: files, or dataset_info.json entries with a ``kto_tag`` column."""
    sources = resolve_sources(spec, dataset_dir, flag)
    for s in sources:
        if s.formatting and "kto_tag" not in s.columns:
            raise MegaliteError(f"{flag}: {s.path}: its dataset_info.json entry has no 'kto_tag' column "
                                "(KTO needs a desirable / undesirable label per example)")
    return sources


# -- examples -> token ids -------------------------------------------------------------------------
def tokenize_example(tokenizer, template: str, example: Example) -> Tuple[List[int], List[int]]:
    """(prompt ids, completion ids) exactly as trl's KTOTrainer tokenizes the example."""
    prompt, (completion,) = tokenize_completions(tokenizer, template, example["prompt"], [example["completion"]])
    return prompt, completion


class Fitted(NamedTuple):
    """An example ready for rows: prompt ids (already cut), completion ids, its label."""
    prompt: List[int]
    completion: List[int]
    label: bool


class Examples(StoreItems):
    """Fitted examples of cached sources: ``examples[k]`` is a ``Fitted``. A store keeps example k
    as document k, prompt + whole completion with the completion mask (the KL rows pair a prompt
    with another example's completion, so completions are stored uncut), and its labels in an
    array saved with the entry."""

    def __init__(self, stores: List[ExampleStore], picks: Optional[np.ndarray] = None):
        super().__init__(stores, picks)
        labels = np.concatenate([st.array("labels") for st in self.stores]).astype(bool)
        self.labels = labels if picks is None else labels[picks]

    def __getitem__(self, k: int) -> Fitted:
        store, j = self.locate(k)
        ids, completion = store[j]
        return Fitted(ids[~completion].tolist(), ids[completion].tolist(), bool(self.labels[k]))


def build_examples(dpo_cfg, chat_template: Optional[str], seq_length: int, tokenizer, spec: Optional[str] = None):
    """(Examples, counts) of every source of ``spec`` (default ``--pref-data``), each source's fitted
    examples cached under ``cache/kto``."""
    template, sources = pref_sources(dpo_cfg, chat_template, tokenizer, spec, resolve_unpaired_sources)
    max_prompt = dpo_cfg.max_prompt_length

    def fit(example, ids, stats, arrays):
        prompt, completion = ids
        prompt = fit_prompt(prompt, len(completion), seq_length, max_prompt, stats)
        if prompt is None:
            return []
        arrays["labels"].append(example["label"])
        stats["examples"] += 1
        stats["desirable"] += int(example["label"])
        return [(np.asarray(prompt + completion, dtype=np.int64),
                 np.arange(len(prompt) + len(completion)) >= len(prompt))]

    stores = [cached_items("kto", source, tokenizer, template, seq_length, dpo_cfg.pref_cache_path,
                           {"kind": "kto", "max_prompt_length": max_prompt}, load_examples, tokenize_example, fit,
                           COUNTS, arrays=("labels",))
              for source in sources]
    return Examples(stores), {k: sum(st.stats[k] for st in stores) for k in COUNTS}


class UnpairedDataset(ItemDataset):
    """KTO examples: a sample holds the fitted example, its position in the set (``index``), the
    sample number ``i`` (``sample``: what precomputed reference scores of KL rows are keyed by,
    as a KL row depends on its micro-batch) and ``held_out``."""

    noun, count = "KTO examples", "examples"

    def summary(self) -> str:
        st, n, desirable = self.stats, len(self.items), int(self.items.labels.sum())
        return (f"KTO data: {n} examples ({desirable} desirable, {n - desirable} undesirable{self.held_out_note()}; "
                f"{st.get('prompt_truncated', 0)} prompts cut to --max-prompt-length, {st.get('truncated', 0)} "
                f"examples cut to --seq-length, {st.get('dropped', 0)} dropped: the prompt fills a row)")

    def item(self, k: int, i: int) -> Dict[str, object]:
        """Example ``k`` as sample ``i``."""
        return {"example": self.items[k], "index": k, "sample": i, "held_out": self.held_out}


def collate_unpaired(items, seq_length: int, pad_to: Optional[int] = None, multiple_of: int = 1,
                     kl_rows: bool = True) -> Dict[str, torch.Tensor]:
    """One micro-batch of n examples: their rows (``tokens``, ``labels``, ``loss_mask``), ``label``
    (1 desirable, 0 undesirable), the counts the loss and metrics are normalised by (``examples``,
    ``desirable``, ``undesirable``, ``desirable_tokens``, ``undesirable_tokens``: completion tokens;
    ``kl_examples`` with KL rows), ``example_index`` / ``sample_index`` / ``held_out``
    and, with ``kl_rows``, the KL rows of the module docstring under ``kl_tokens`` / ``kl_labels`` /
    ``kl_loss_mask`` (padded on their own); sequences keep their first ``seq_length + 1`` ids."""
    examples = [it["example"] for it in items]
    rows = [training_row(*fit_sequence(e.prompt, e.completion, seq_length)) for e in examples]
    batch = collate_sft(rows, pad_to, multiple_of)
    batch.pop("position_ids")
    label = torch.tensor([float(e.label) for e in examples])
    tokens = batch["loss_mask"].sum(1)
    batch.update(label=label, examples=torch.ones(len(items)), desirable=label, undesirable=1 - label,
                 desirable_tokens=tokens * label, undesirable_tokens=tokens * (1 - label),
                 example_index=torch.tensor([it["index"] for it in items], dtype=torch.int64),
                 sample_index=torch.tensor([it["sample"] for it in items], dtype=torch.int64),
                 held_out=torch.tensor([int(it["held_out"]) for it in items]))
    if kl_rows:
        mismatched = [fit_sequence(e.prompt, examples[j - 1].completion, seq_length) for j, e in enumerate(examples)]
        kl = collate_sft([training_row(*seq) for seq in mismatched], pad_to, multiple_of)
        batch.update({f"kl_{k}": kl[k] for k in ("tokens", "labels", "loss_mask")})
        batch["kl_examples"] = torch.ones(len(items))
    return batch


def kl_view(mb: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The KL rows of a micro-batch as a micro-batch of their own (for a forward-only pass)."""
    return {"tokens": mb["kl_tokens"], "labels": mb["kl_labels"], "loss_mask": mb["kl_loss_mask"],
            "sample_index": mb["sample_index"]}
