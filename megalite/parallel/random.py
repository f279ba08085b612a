"""A second random stream for dropout that must differ across tensor- and context-parallel ranks.

Dropout on activations every tensor-parallel rank holds in full (the residual stream
without sequence parallelism) must draw the same mask on every rank, so it uses the usual
global generator, seeded alike. Dropout on what a rank holds alone (its attention heads,
its slice of the sequence) must draw independent masks: it runs inside ``tp_rng()``, which
swaps in a generator seeded by (seed, tensor-parallel rank, context-parallel rank).
``recompute`` is activation checkpointing that replays both streams, so recomputed masks
equal the original ones.

With context parallelism and no sequence parallelism, residual-stream dropout draws the whole
sequence's mask from the global stream, as one process would, and keeps the rows of the rank's
chunks: the masks, and so the losses, equal one process's (at the cost of one transient
full-sequence mask per dropout).
"""

import contextlib
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megalite.parallel import state
from megalite.parallel.context import chunk_indices

TP_SEED_OFFSET = 2718  # as Megatron, so the stream never coincides with the global one


def _get_global() -> Dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_global(s: Dict) -> None:
    torch.set_rng_state(s["cpu"])
    if "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"])


class _TPStream:
    def __init__(self):
        self.state: Optional[Dict] = None

    def seed(self, seed: int) -> None:
        saved = _get_global()
        s = state.get()
        torch.manual_seed(seed + TP_SEED_OFFSET + s.tp_rank + s.tp_size * s.cp_rank)
        self.state = _get_global()
        _set_global(saved)

    @contextlib.contextmanager
    def fork(self):
        if self.state is None:
            raise RuntimeError("the tensor-parallel random stream was never seeded (call seed_tp_rng)")
        saved = _get_global()
        _set_global(self.state)
        try:
            yield
        finally:
            self.state = _get_global()
            _set_global(saved)


_stream = _TPStream()


def seed_tp_rng(seed: int) -> None:
    _stream.seed(seed)


def get_tp_rng_state() -> Optional[Dict]:
    return _stream.state


def set_tp_rng_state(s: Optional[Dict]) -> None:
    _stream.state = s


def tp_rng(per_rank: bool = True):
    """Context for random draws that must differ across tensor- and context-parallel ranks (a
    no-op when there is only one rank, or when ``per_rank`` is False)."""
    s = state.get()
    if per_rank and s.tp_size * s.cp_size > 1:
        return _stream.fork()
    return contextlib.nullcontext()


class SequenceDropout(nn.Dropout):
    """Dropout on the residual stream: per-rank masks only when the sequence is split over
    tensor-parallel ranks; split over context-parallel ranks, the rows of one process's mask."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        s = state.get()
        if s.cp_size > 1 and not s.sequence_parallel:
            return _chunk_rows_dropout(x, self.p)
        with tp_rng(s.sequence_parallel):
            return F.dropout(x, self.p, True)


def _chunk_rows_dropout(x, p: float):
    """Dropout of this context-parallel rank's rows of the sequence with the mask one process
    draws for the whole sequence (``F.dropout``'s own draw on CPU: bernoulli, then scale)."""
    s = state.get()
    seq = x.shape[0] * s.cp_size
    noise = torch.empty((seq, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    rows = chunk_indices(seq, s.cp_size, s.cp_rank, x.device)
    return x * noise.index_select(0, rows).div_(1 - p)


def recompute(fn, *args):
    """Activation checkpointing (non-reentrant) that also replays the tensor-parallel stream."""
    snapshot = {}

    @contextlib.contextmanager
    def on_forward():
        snapshot["state"] = _stream.state
        yield

    @contextlib.contextmanager
    def on_recompute():
        current = _stream.state
        _stream.state = snapshot["state"]
        try:
            yield
        finally:
            _stream.state = current

    return checkpoint(fn, *args, use_reentrant=False, context_fn=lambda: (on_forward(), on_recompute()))
