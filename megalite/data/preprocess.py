"""Tokenize a corpus into ``<prefix>_<key>_document.{bin,idx}`` with N worker processes.

The main process only reads raw batches of lines and appends finished token arrays to the
output; JSON parsing and tokenization happen in the workers, one ~1 MB batch per task, so
there is no per-document inter-process traffic. At most a few batches per worker are in
flight, so memory stays bounded whatever the input size, and results are written in input
order, so the output does not depend on the number of workers.
"""

import itertools
import multiprocessing as mp
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megalite.data.corpus import RecordBatch, expand_inputs, extract_text, read_batches, total_bytes
from megalite.data.indexed import IndexedDatasetBuilder, best_dtype
from megalite.data.tokenizer import Tokenizer, build_tokenizer
from megalite.errors import MegaliteError
from megalite.utils.progress import Progress

MAX_BAD_EXAMPLES = 20
# Tokenizing costs about 45 bytes of memory per byte of text (ids as Python ints, the
# tokenizer's own buffers): 8 MiB lines keep a worker under ~0.4 GB and lose almost no real
# document (books are 1-5 MB).
MAX_LINE_BYTES = 8 << 20


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker needs to rebuild the tokenizer in its own process."""

    tokenizer_type: str
    tokenizer_model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None

    def build(self) -> Tokenizer:
        return build_tokenizer(self.tokenizer_type, self.tokenizer_model, self.vocab_file, self.merge_file)


@dataclass
class PreprocessConfig:
    inputs: Sequence[str]
    output_prefix: str
    tokenizer: TokenizerSpec
    json_keys: Sequence[str] = ("text",)
    append_eod: bool = False
    workers: int = 1
    rank: int = 0
    world_size: int = 1
    strict: bool = False
    batch_bytes: int = 1 << 20
    log_interval: float = 10.0
    max_line_bytes: int = MAX_LINE_BYTES  # longer lines (and .txt files) are bad records; 0: no limit
    allow_empty: bool = False  # write an output that got no documents (else: an error, nothing written)


@dataclass
class Summary:
    documents: int = 0
    tokens: int = 0
    empty: int = 0  # documents whose text encodes to nothing; skipped
    bad: int = 0  # malformed records; skipped
    bad_examples: List[str] = field(default_factory=list)
    seconds: float = 0.0
    outputs: List[str] = field(default_factory=list)

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def lines(self) -> List[str]:
        out = [
            f"documents: {self.documents}  tokens: {self.tokens}  empty skipped: {self.empty}  "
            f"bad records skipped: {self.bad}",
            f"time: {self.seconds:.1f}s  ({self.documents / max(self.seconds, 1e-9):.0f} docs/s, "
            f"{self.tokens_per_sec:.0f} tokens/s)",
        ]
        if self.bad:
            shown = "\n  ".join(self.bad_examples)
            more = self.bad - len(self.bad_examples)
            out.append(f"bad records:\n  {shown}" + (f"\n  ... and {more} more" if more > 0 else ""))
        out += [f"wrote {p}.bin/.idx" for p in self.outputs]
        return out


@dataclass
class _Encoded:
    """One batch's result, as sent back from a worker."""

    source: str
    nbytes: int
    tokens: Dict[str, Tuple[np.ndarray, np.ndarray]]  # key -> (concatenated ids, lengths)
    documents: int
    empty: int
    bad: List[Tuple[int, str]]  # (line number, reason), at most MAX_BAD_EXAMPLES
    bad_count: int


_worker: Optional[Tuple[Tokenizer, Sequence[str], bool, np.dtype]] = None


def _init_worker(spec: TokenizerSpec, keys: Sequence[str], append_eod: bool) -> None:
    global _worker
    tok = spec.build()
    _worker = (tok, tuple(keys), append_eod, best_dtype(tok.vocab_size))


def _encode(batch: RecordBatch) -> _Encoded:
    tok, keys, append_eod, dtype = _worker
    texts: Dict[str, List[str]] = {k: [] for k in keys}
    bad: List[Tuple[int, str]] = []
    bad_count = 0
    for line, record in zip(batch.line_numbers, batch.records):
        try:
            values = [extract_text(record, k) for k in keys]
        except ValueError as e:
            bad_count += 1
            if len(bad) < MAX_BAD_EXAMPLES:
                bad.append((line, str(e)))
            continue
        for k, v in zip(keys, values):
            texts[k].append(v)
    out, empty, documents = {}, 0, 0
    for k in keys:
        ids = [d for d in tok.encode_batch(texts[k]) if d]
        empty += len(texts[k]) - len(ids)
        documents = max(documents, len(ids))
        if append_eod:
            for d in ids:
                d.append(tok.eod)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        out[k] = (flat, lengths)
    return _Encoded(batch.source, batch.nbytes, out, documents, empty, bad, bad_count)


def output_prefix(prefix: str, key: str, rank: int = 0, world_size: int = 1) -> str:
    """``<prefix>_<key>_document``; with --world-size W each part gets ``_RRRRR-of-WWWWW``."""
    if world_size > 1:
        prefix = f"{prefix}_{rank:05d}-of-{world_size:05d}"
    return f"{prefix}_{key}_document"


def preprocess(cfg: PreprocessConfig) -> Summary:
    if cfg.workers < 1:
        raise MegaliteError(f"--workers {cfg.workers} must be at least 1")
    if cfg.max_line_bytes < 0:
        raise MegaliteError(f"--max-line-bytes {cfg.max_line_bytes} must be 0 (no limit) or more")
    if not cfg.json_keys:
        raise MegaliteError("--json-keys needs at least one key")
    files = expand_inputs(cfg.inputs)
    tok = cfg.tokenizer.build()  # fail fast on a bad tokenizer, before any worker starts
    dtype = best_dtype(tok.vocab_size)
    prefixes = {k: output_prefix(cfg.output_prefix, k, cfg.rank, cfg.world_size) for k in cfg.json_keys}
    builders = {k: IndexedDatasetBuilder(p, dtype) for k, p in prefixes.items()}
    summary = Summary(outputs=list(prefixes.values()))
    progress = Progress("preprocess", total_bytes(files), interval=cfg.log_interval)
    batches = read_batches(files, cfg.batch_bytes, cfg.rank, cfg.world_size, cfg.max_line_bytes)
    init_args = (cfg.tokenizer, tuple(cfg.json_keys), cfg.append_eod)
    pool = None
    try:
        if cfg.workers == 1:
            _init_worker(*init_args)
            results = map(_encode, batches)
        else:
            pool = mp.get_context("spawn").Pool(cfg.workers, _init_worker, init_args)
            results = _bounded_imap(pool, _encode, batches, max_inflight=3 * cfg.workers)
        for r in results:
            _collect(r, builders, summary, cfg.strict)
            progress.update(r.nbytes, docs=r.documents, tokens=sum(len(t) for t, _ in r.tokens.values()))
        if not cfg.allow_empty:
            _refuse_empty(cfg, builders, summary)
        for b in builders.values():
            b.finalize()
    except BaseException:
        if pool is not None:
            pool.terminate()
        for b in builders.values():
            b.abort()
        raise
    finally:
        progress.close()
        if pool is not None:
            pool.close()
            pool.join()
    summary.seconds = progress.elapsed
    return summary


def _refuse_empty(cfg: PreprocessConfig, builders, summary: Summary) -> None:
    """An output without documents is an error: publishing it would replace a good dataset at
    that prefix with an empty one, and training on it cannot work."""
    empty = [b.path_prefix for b in builders.values() if b.num_sequences == 0]
    if empty:
        first = f"; first: {summary.bad_examples[0]}" if summary.bad_examples else ""
        raise MegaliteError(
            f"--input {' '.join(cfg.inputs)}: no documents for {', '.join(empty)} ({summary.bad} bad records, "
            f"{summary.empty} empty texts skipped{first}); nothing written, files already there are kept "
            "(--allow-empty writes an empty dataset)")


def _bounded_imap(pool, fn, items, max_inflight: int):
    """Ordered ``pool.imap`` that reads at most ``max_inflight`` items ahead of the consumer."""
    inflight = deque()
    for item in items:
        inflight.append(pool.apply_async(fn, (item,)))
        if len(inflight) >= max_inflight:
            yield inflight.popleft().get()
    while inflight:
        yield inflight.popleft().get()


def _collect(r: _Encoded, builders, summary: Summary, strict: bool) -> None:
    if r.bad_count:
        if strict:
            line, reason = r.bad[0]
            raise MegaliteError(f"{r.source}:{line}: {reason} (drop --strict to skip bad records)")
        summary.bad += r.bad_count
        room = MAX_BAD_EXAMPLES - len(summary.bad_examples)
        summary.bad_examples += [f"{r.source}:{line}: {reason}" for line, reason in r.bad[:room]]
    for k, (flat, lengths) in r.tokens.items():
        if len(lengths):
            builders[k].add_documents(flat, lengths)
    summary.documents += r.documents
    summary.empty += r.empty
    summary.tokens += sum(len(flat) for flat, _ in r.tokens.values())
