"""Tokenized SFT examples: (token ids, trainable mask) per conversation, cached as ``.bin/.idx``.

One cache entry per data source, named by a hash of everything that shapes it: the files'
paths, sizes and modification times, their layout, the tokenizer's files, the chat template
and its special tokens, ``seq_length`` and ``train_on_prompt``. An entry is two Megatron
``.bin/.idx`` pairs (``<key>_tokens``, ``<key>_mask``, one document per example) and a
``<key>-description.json`` written last, holding the counts. It is built once (in worker
processes for large sources) and reused; under torch.distributed rank 0 builds while the
others wait at a barrier.

Truncation: an example keeps at most ``seq_length + 1`` ids (``seq_length`` training
positions). Turns are kept whole from the start while they fit; the first turn that does not
fit is cut LLaMA-Factory style: its prompt (``s`` tokens) and response (``t``) share the
remaining budget ``b``: a short response (``2t < b``) is kept whole and the prompt cut, a
short prompt (``2s < b``) is kept whole and the response cut, otherwise both are cut in
proportion ``t / (s + t)``; each keeps its head. Later turns are dropped. Examples left with
no trainable token are dropped. Both are counted.
"""

import hashlib
import json
import multiprocessing as mp
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from megalite.data.chat import resolve_template, tokenize_chat
from megalite.data.gpt_dataset import _barrier, _is_builder_rank
from megalite.data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype, exists
from megalite.data.sft_formats import SFTSource, load_conversations, resolve_sources
from megalite.errors import MegaliteError
from megalite.utils.atomic import atomic_write
from megalite.utils.progress import Progress

CACHE_VERSION = 1
CHUNK = 256  # conversations per worker task


def truncate(ids: np.ndarray, assistant: np.ndarray, max_len: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Cut ``ids`` (and its assistant mask) to ``max_len`` by the policy in the module docstring."""
    if len(ids) <= max_len:
        return ids, assistant, False
    keep = np.zeros(len(ids), dtype=bool)
    budget = max_len
    for start, s, t in _turns(assistant):
        if s + t <= budget:
            keep[start:start + s + t] = True
            budget -= s + t
            continue
        s_new, t_new = _share(s, t, budget)
        keep[start:start + s_new] = True
        keep[start + s:start + s + t_new] = True
        break
    return ids[keep], assistant[keep], True


def _turns(assistant: np.ndarray) -> List[Tuple[int, int, int]]:
    """(start, prompt length, response length) of each prompt run followed by its assistant run."""
    edges = np.flatnonzero(np.diff(assistant.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(assistant)]
    runs = [(bounds[i], bounds[i + 1], bool(assistant[bounds[i]])) for i in range(len(bounds) - 1)]
    turns, i = [], 0
    while i < len(runs):
        start, end, trainable = runs[i]
        if trainable:  # a response with no prompt before it
            turns.append((start, 0, end - start))
            i += 1
        elif i + 1 < len(runs):
            turns.append((start, end - start, runs[i + 1][1] - runs[i + 1][0]))
            i += 2
        else:
            turns.append((start, end - start, 0))
            i += 1
    return turns


def _share(s: int, t: int, budget: int) -> Tuple[int, int]:
    if 2 * t < budget:
        max_t = budget
    elif 2 * s < budget:
        max_t = budget - s
    else:
        max_t = int(budget * t / (s + t))
    t_new = min(max_t, t)
    return min(max(budget - t_new, 0), s), t_new


def tokenize_example(tokenizer, template: str, messages, max_len: int, train_on_prompt: bool):
    """(ids, trainable mask, truncated?) of one conversation."""
    ids, assistant = tokenize_chat(tokenizer, template, messages)
    ids, assistant, cut = truncate(ids, assistant, max_len)
    return ids, (np.ones(len(ids), dtype=bool) if train_on_prompt else assistant), cut


class ExampleStore:
    """The cached examples of one source: ``store[i]`` is (ids int64, trainable mask bool)."""

    def __init__(self, prefix: str, stats: Dict[str, int], name: str = "", built: bool = False):
        self.prefix, self.name, self.built = prefix, name, built  # built: tokenized by this call
        self.tokens = IndexedDataset(prefix + "_tokens")
        self.mask = IndexedDataset(prefix + "_mask")
        self.stats = dict(stats)
        self._arrays = {}
        if len(self.tokens) != len(self.mask):
            raise MegaliteError(f"{prefix}: SFT cache holds {len(self.tokens)} token and {len(self.mask)} mask "
                                "sequences; delete it to rebuild")

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.tokens.sequence_lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.tokens[i].astype(np.int64), self.mask[i].astype(bool)

    def array(self, name: str) -> np.ndarray:
        """A per-sequence array ``write_store`` saved with the entry (e.g. KTO's labels), read once."""
        if name not in self._arrays:
            self._arrays[name] = np.load(f"{self.prefix}_{name}.npy")
        return self._arrays[name]


def cache_description(source: SFTSource, tokenizer, template: str, seq_length: int, train_on_prompt: bool) -> dict:
    return {"version": CACHE_VERSION, "source": source.description(), "tokenizer": tokenizer.fingerprint(),
            "special_tokens": tokenizer.special_tokens, "template": template, "seq_length": seq_length,
            "train_on_prompt": train_on_prompt}


def load_or_build_store(source: SFTSource, tokenizer, template: str, seq_length: int, train_on_prompt: bool,
                        cache_dir: Optional[str] = None, workers: int = 1) -> ExampleStore:
    """The source's tokenized examples, from the cache or built into it (rank 0 builds)."""
    description = cache_description(source, tokenizer, template, seq_length, train_on_prompt)

    def build(prefix):
        _build(prefix, description, source, tokenizer, template, seq_length + 1, train_on_prompt, workers)

    return cached_store(source, description, cache_dir, "sft", build)


def cached_store(source: SFTSource, description: dict, cache_dir: Optional[str], kind: str, build) -> ExampleStore:
    """The cache entry of ``description`` for ``source`` (in ``cache_dir``, default
    ``<source folder>/cache/<kind>``): rank 0 runs ``build(prefix)`` when it is missing or stale,
    the other ranks wait for it."""
    digest = hashlib.md5(json.dumps(description, sort_keys=True).encode()).hexdigest()
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(source.path)), "cache", kind)
    prefix = os.path.join(cache_dir, f"{digest}-{os.path.basename(os.path.normpath(source.path))}")
    built = False
    if _is_builder_rank() and _cached_stats(prefix, description) is None:
        build(prefix)
        built = True
    _barrier()
    stats = _cached_stats(prefix, description)
    if stats is None:
        raise MegaliteError(f"{os.path.dirname(prefix)}: the {kind} cache for {source.path} is missing after "
                            "building it")
    return ExampleStore(prefix, stats, source.path, built)


def write_store(prefix: str, description: dict, chunks: Iterable[List[Tuple[np.ndarray, np.ndarray]]],
                stats: Dict[str, int], vocab_size: int, arrays: Optional[Dict[str, list]] = None) -> None:
    """Write the (ids, mask) sequences of ``chunks`` as a cache entry; ``stats`` and ``arrays``
    (one value per sequence, read back with ``ExampleStore.array``) are filled while the chunks
    are consumed; ``description`` goes into the description file, written last."""
    with IndexedDatasetBuilder(prefix + "_tokens", best_dtype(vocab_size)) as tokens, \
            IndexedDatasetBuilder(prefix + "_mask", np.uint8) as masks:
        for chunk in chunks:
            if chunk:
                lengths = np.array([len(ids) for ids, _ in chunk])
                tokens.add_documents(np.concatenate([ids for ids, _ in chunk]), lengths)
                masks.add_documents(np.concatenate([m for _, m in chunk]).astype(np.uint8), lengths)
    for name, values in (arrays or {}).items():
        with atomic_write(f"{prefix}_{name}.npy", "wb") as f:
            np.save(f, np.asarray(values))
    with atomic_write(prefix + "-description.json", "w") as f:
        json.dump({"description": description, "stats": stats}, f, indent=1, sort_keys=True)


def _cached_stats(prefix: str, description: dict) -> Optional[Dict[str, int]]:
    path = prefix + "-description.json"
    if not (os.path.isfile(path) and exists(prefix + "_tokens") and exists(prefix + "_mask")):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return saved["stats"] if saved.get("description") == description else None


_WORKER: tuple = ()


def _init_worker(*args) -> None:
    global _WORKER
    _WORKER = args


def _tokenize_chunk(chunk: Sequence[Tuple[str, int, list]]):
    tokenizer, template, max_len, train_on_prompt = _WORKER
    out = []
    for path, index, messages in chunk:
        try:
            out.append(tokenize_example(tokenizer, template, messages, max_len, train_on_prompt))
        except MegaliteError as e:
            raise MegaliteError(f"{path}: record {index}: {e}") from None
        except Exception as e:  # a template's raise_exception, or its own bugs, on this record
            raise MegaliteError(f"{path}: record {index}: chat template failed: {type(e).__name__}: {e}") from None
    return out


def _chunks(items: Iterable, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _build(prefix, description, source, tokenizer, template, max_len, train_on_prompt, workers) -> None:
    conversations = list(load_conversations(source))
    init = (tokenizer, template, max_len, train_on_prompt)
    stats = {"examples": len(conversations), "truncated": 0, "dropped": 0}
    progress = Progress(f"sft tokenize {os.path.basename(source.path)}")
    pool = None

    def kept_chunks(results):
        for chunk in results:
            kept = [(ids, mask) for ids, mask, _ in chunk if mask[1:].any()]
            stats["truncated"] += sum(cut for _, _, cut in chunk)
            stats["dropped"] += len(chunk) - len(kept)
            progress.update(examples=len(chunk))
            yield kept

    try:
        if workers > 1 and len(conversations) > CHUNK:
            # fork: workers inherit the tokenizer and template instead of unpickling them
            pool = mp.get_context("fork").Pool(workers, _init_worker, init)
            results = pool.imap(_tokenize_chunk, _chunks(conversations, CHUNK))
        else:
            _init_worker(*init)
            results = map(_tokenize_chunk, _chunks(conversations, CHUNK))
        write_store(prefix, description, kept_chunks(results), stats, tokenizer.vocab_size)
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def load_sources(sft_cfg, spec: str, flag: str, seq_length: int, tokenizer, workers: Optional[int] = None,
                 chat_template: Optional[str] = None):
    """(sources, their example stores) for one data flag, tokenizing what is not cached yet."""
    template = resolve_template(chat_template, tokenizer)
    workers = workers or min(8, os.cpu_count() or 1)
    sources = resolve_sources(spec, sft_cfg.sft_dataset_dir, flag)
    return sources, [load_or_build_store(s, tokenizer, template, seq_length, sft_cfg.train_on_prompt,
                                         sft_cfg.sft_cache_path, workers) for s in sources]
