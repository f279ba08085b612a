"""Perplexity and bits per byte of held-out text.

Each dataset is one token stream (its documents in order, each ending with the end-of-document
token, as ``tools/preprocess_data.py --append-eod`` writes them). The stream is cut into
windows of ``seq_length`` inputs plus their next-token targets. Every token after the first
is scored exactly once:

* fixed windows (stride = seq_length): window i feeds tokens [i*L, (i+1)*L) and scores
  tokens i*L+1 .. (i+1)*L -- exactly the samples the trainer evaluates;
* sliding windows (``--eval-stride S < L``): windows start every S tokens and score only the
  tokens the previous window did not reach, so each is scored with at least L - S tokens of
  preceding context.

Bits per byte divide the summed negative log-likelihood (in bits) by the UTF-8 bytes of the
text, so models with different tokenizers compare.
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megalite.data.blended import parse_data_path
from megalite.data.indexed import IndexedDataset
from megalite.data.tokenizer import Tokenizer
from megalite.errors import MegaliteError
from megalite.eval.scoring import token_logprobs
from megalite.eval.texts import read_documents
from megalite.parallel import state
from megalite.utils.progress import Progress


@dataclass
class EvalText:
    """One dataset to score: its token stream and the UTF-8 size of the text it encodes."""
    name: str
    tokens: np.ndarray
    num_bytes: int


def text_file_source(path: str, tokenizer: Tokenizer, key: str = "text", limit: Optional[int] = None) -> EvalText:
    docs = read_documents(path, key)[:limit]
    ids = [tok + [tokenizer.eod] for tok in tokenizer.encode_batch(docs)]
    return EvalText(path, np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]),
                    sum(len(d.encode("utf-8")) for d in docs))


def indexed_source(prefix: str, tokenizer: Tokenizer, limit: Optional[int] = None) -> EvalText:
    ds = IndexedDataset(prefix)
    n = ds.num_documents if limit is None else min(limit, ds.num_documents)
    if n == 0:
        raise MegaliteError(f"--data-path {prefix}: the dataset holds no documents")
    docs = [np.asarray(ds.document(d), dtype=np.int64) for d in range(n)]
    num_bytes = sum(len(tokenizer.decode(doc[doc != tokenizer.eod].tolist()).encode("utf-8")) for doc in docs)
    return EvalText(prefix, np.concatenate(docs), num_bytes)


def load_sources(tokenizer: Tokenizer, data_path: Optional[Sequence[str]] = None,
                 text_files: Sequence[str] = (), key: str = "text",
                 limit: Optional[int] = None) -> Tuple[List[EvalText], Optional[List[float]]]:
    """The datasets named by --data-path (prefixes, optionally weighted as a blend) and
    --text-file; returns (sources, blend weights or None)."""
    sources, weights = [], None
    if data_path:
        prefixes, weights = parse_data_path(data_path)
        sources += [indexed_source(p, tokenizer, limit) for p in prefixes]
    sources += [text_file_source(f, tokenizer, key, limit) for f in text_files]
    if weights is not None and text_files:
        raise MegaliteError("blend weights in --data-path cannot be combined with --text-file")
    if not sources:
        raise MegaliteError("perplexity needs --data-path or --text-file")
    return sources, weights


def windows(num_tokens: int, length: int, stride: int) -> Iterator[Tuple[int, int, int]]:
    """(begin, end, first scored position): the window feeds tokens [begin, end - 1) and
    scores positions [first, end)."""
    if not 1 <= stride <= length:
        raise MegaliteError(f"--eval-stride {stride} must be between 1 and the window length {length}")
    begin, first = 0, 1
    while first < num_tokens:
        end = min(begin + length + 1, num_tokens)
        yield begin, end, first
        begin, first = begin + stride, end


def stream_nll(model, tokens: np.ndarray, length: int, stride: int, batch_size: int,
               pad_id: int = 0, progress: Optional[Progress] = None) -> Tuple[float, int]:
    """(summed negative log-likelihood in nats, tokens scored) over one stream."""
    total, count = 0.0, 0
    spans = list(windows(len(tokens), length, stride))
    for i in range(0, len(spans), batch_size):
        batch = spans[i : i + batch_size]
        scores = token_logprobs(model, [tokens[b:e].tolist() for b, e, _ in batch], pad_id)
        before = count
        for (b, e, first), (logprobs, _) in zip(batch, scores):
            scored = logprobs[first - b - 1 :].double()
            total -= float(scored.sum())
            count += len(scored)
        if progress is not None:
            progress.update(tokens=count - before)
    return total, count


def _summary(nll: float, tokens: int, num_bytes: int) -> Dict:
    loss = nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nll / math.log(2) / max(num_bytes, 1), "tokens": tokens, "bytes": num_bytes}


def perplexity(model, sources: Sequence[EvalText], seq_length: int, stride: Optional[int] = None,
               batch_size: int = 8, weights: Optional[Sequence[float]] = None, pad_id: int = 0) -> Dict:
    """Loss, perplexity and bits per byte per dataset and overall, for an in-memory model (one
    process, or every rank of its tensor / pipeline layout together). Overall pools every
    scored token, or with blend ``weights`` averages the datasets' numbers by weight."""
    stride = stride or seq_length
    model.eval()
    progress = Progress("perplexity") if state.get().rank == 0 else None
    summaries = []
    for src in sources:
        nll, n = stream_nll(model, src.tokens, seq_length, stride, batch_size, pad_id, progress)
        summaries.append(_summary(nll, n, src.num_bytes))
    if progress is not None:
        progress.close()
    tokens, num_bytes = sum(p["tokens"] for p in summaries), sum(p["bytes"] for p in summaries)
    if weights is None:
        overall = _summary(sum(p["loss"] * p["tokens"] for p in summaries), tokens, num_bytes)
    else:
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        loss = float(sum(wi * p["loss"] for wi, p in zip(w, summaries)))
        overall = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                   "bits_per_byte": float(sum(wi * p["bits_per_byte"] for wi, p in zip(w, summaries))),
                   "tokens": tokens, "bytes": num_bytes}
    per = {}
    for src, summary in zip(sources, summaries):  # a dataset named twice in a blend keeps both entries
        name = src.name if src.name not in per else f"{src.name} ({len(per) + 1})"
        per[name] = summary
    return {"seq_length": seq_length, "stride": stride, "datasets": per, "overall": overall}
