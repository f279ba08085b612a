"""Context parallelism: every sequence split over the context-parallel (CP) ranks, attention
computed as a ring.

Load balancing for causal masks, as Megatron does: a sequence of S tokens is cut into 2C
chunks and CP rank i holds chunks i and 2C-1-i (tokens, labels, loss mask and positions), so
every rank gets the same share of the causal triangle. Positions keep their global values,
so RoPE follows the chunks; packed documents keep theirs too (restarting at 0 where a
document begins), and a token's document starts at ``its global index - its position``,
which holds across chunk borders.

Ring attention: each rank keeps its queries and passes its key/value block round the ring
(rank r sends to r+1 and receives from r-1), posting the next exchange before computing on
the block it holds, so the transfer overlaps the computation. Each block's partial result
comes with its log-sum-exp and the partials are merged exactly (online softmax). The
backward is written by hand: it recomputes each block's probabilities from the final
log-sum-exp, keeps dQ local and sends the key/value gradients round the ring with their
block, one step behind it, so they arrive back at their owner. A block is computed only on
the rows and columns its mask allows (with the load balancing, half of every off-diagonal
block; with a sliding window, blocks wholly outside the window are skipped). With fused
kernels on (and Triton running on the tensors, no attention dropout) each block runs the
Triton flash-attention kernel once per pair of a query chunk and a key chunk that causality
and the window allow, the masks decided inside by global token index; its backward
recomputes the probabilities from the final log-sum-exp too. Otherwise the per-block math
is plain torch (matmuls in fp32 at least), over tiles of query rows that bound its working
memory. The flash-attn package is not used per block (nothing here can run it).
"""

from typing import Dict, Optional

import torch
import torch.distributed as dist

from megalite.kernels import dispatch
from megalite.parallel import state


def _chunks(seq: int, cp_size: int, cp_rank: int):
    """The two chunks CP rank ``cp_rank`` holds, cp_rank and 2C-1-cp_rank of 2C: (local slice,
    global index of the first token) each."""
    c = seq // (2 * cp_size)
    return [(slice(0, c), cp_rank * c), (slice(c, 2 * c), (2 * cp_size - 1 - cp_rank) * c)]


def chunk_indices(seq: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """Global indices of the tokens CP rank ``cp_rank`` holds, in the order it holds them."""
    c = seq // (2 * cp_size)
    return torch.cat([torch.arange(first, first + c, device=device) for _, first in _chunks(seq, cp_size, cp_rank)])


def split_batch(mb: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """This CP rank's part of a micro-batch: every [batch, seq, ...] tensor cut to its chunks,
    with ``position_ids`` (the global positions, when the batch had none) cut the same way."""
    s = state.get()
    if s.cp_size == 1:
        return mb
    b, seq = mb["tokens"].shape
    rows = chunk_indices(seq, s.cp_size, s.cp_rank, mb["tokens"].device)
    out = {k: v.index_select(1, rows) if v.dim() >= 2 and v.shape[1] == seq else v for k, v in mb.items()}
    if "position_ids" not in mb:
        out["position_ids"] = rows.expand(b, -1)
    return out


def document_starts(positions: torch.Tensor) -> Optional[torch.Tensor]:
    """[batch, local seq] global index where each token's document begins (positions restart at
    0 at every document start); None when every row is one document (plain causal)."""
    s = state.get()
    mine = chunk_indices(positions.shape[1] * s.cp_size, s.cp_size, s.cp_rank, positions.device)
    starts = mine[None, :] - positions
    return None if not bool(starts.any()) else starts


def _allowed(q_idx, k_idx, doc_start, window):
    """[1 or batch, queries, keys] which query may see which key, by global index."""
    ok = k_idx[None, :] <= q_idx[:, None]
    if window is not None:
        ok = ok & (k_idx[None, :] >= q_idx[:, None] - window)
    ok = ok[None]
    if doc_start is not None:
        ok = ok & (k_idx[None, None, :] >= doc_start[:, :, None])
    return ok


def _crop(q_idx, k_idx, window):
    """(query rows, key columns) of a block with at least one pair causality and the window
    allow (documents only mask more, pair by pair); None when there is none. Found by binary
    search on the ascending global indices, so no block-sized mask is built."""
    keys_to = torch.searchsorted(k_idx, q_idx, right=True)  # keys at or before each query
    keys_from = torch.searchsorted(k_idx, q_idx - window) if window is not None else torch.zeros_like(keys_to)
    queries_from = torch.searchsorted(q_idx, k_idx)  # queries at or after each key
    queries_to = (torch.searchsorted(q_idx, k_idx + window, right=True) if window is not None
                  else torch.full_like(queries_from, len(q_idx)))
    rows, cols = keys_to > keys_from, queries_to > queries_from
    if not bool(rows.any()):
        return None
    return rows.nonzero().squeeze(1), cols.nonzero().squeeze(1)


def _tile_mask(mine, theirs, doc_start, window, part, cols):
    return _allowed(mine[part], theirs[cols], None if doc_start is None else doc_start[:, part], window)


TILE_ELEMENTS = 2**27  # scores of one tile of query rows (batch x heads x rows x keys): bounds the working memory


def _row_tiles(rows, cols, q):
    """``rows`` in tiles whose score matrices hold at most TILE_ELEMENTS (long sequences on a GPU)."""
    per_row = q.shape[1] * q.shape[2] * len(cols)
    return rows.split(max(1, TILE_ELEMENTS // per_row))


def _heads(t, h):
    """[batch, kv heads, n, d] -> [batch, h, n, d], each key/value head serving its query heads."""
    return t if t.shape[1] == h else t.repeat_interleave(h // t.shape[1], dim=1)


def _scores(q, k, ok, scale):
    s = torch.matmul(q, _heads(k, q.shape[1]).transpose(-1, -2)) * scale
    return s.masked_fill(~ok[:, None], float("-inf"))


def _kept(p, dropout_p):
    """Dropout's keep mask for probabilities ``p``, scaled by 1 / (1 - dropout_p); None without dropout."""
    return None if dropout_p == 0 else (torch.rand_like(p) >= dropout_p).to(p.dtype) / (1 - dropout_p)


def _block_forward(q, k, v, ok, scale, dropout_p):
    """Attention of queries q [b, h, m, d] over one key block: (output [b, h, m, d], lse [b, h, m]).
    Dropout acts on the probabilities, after the block's own normalisation: merging rescales
    rows only, so the result is dropout on the whole row's probabilities."""
    s = _scores(q, k, ok, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(lse == float("-inf"), 0.0)[..., None])
    keep = _kept(p, dropout_p)
    return torch.matmul(p if keep is None else p * keep, _heads(v, q.shape[1])), lse


def _block_backward(q, k, v, do, ok, lse, delta, scale, dropout_p):
    """Gradients of one key block's share of attention: (dq [b, h, m, d], dk and dv per query head
    [b, h, n, d]), the probabilities recomputed from the rows' final log-sum-exp ``lse`` [b, h, m],
    with ``delta`` = rowsum(dO * O) of the merged output."""
    p = torch.exp(_scores(q, k, ok, scale) - lse[..., None])
    keep = _kept(p, dropout_p)  # the forward's mask: same generator state, same draws
    dp = torch.matmul(do, _heads(v, q.shape[1]).transpose(-1, -2))
    if keep is not None:
        dp = dp * keep
    ds = p * (dp - delta[..., None]) * scale
    dv = torch.matmul((p if keep is None else p * keep).transpose(-1, -2), do)
    return torch.matmul(ds, _heads(k, q.shape[1])), torch.matmul(ds.transpose(-1, -2), q), dv


def _group_sum(t, hk):
    """Per query head [b, h, n, d] -> per key/value head [b, hk, n, d]."""
    b, h = t.shape[:2]
    return t if h == hk else t.view(b, hk, h // hk, *t.shape[2:]).sum(2)


def _merge(out, lse, part, o, block_lse):
    """Fold one block's output and log-sum-exp for the query rows ``part`` into the running ones
    (online softmax); a row that no key has reached yet on either side stays 0 and -inf."""
    merged = torch.logaddexp(lse[:, :, part], block_lse)
    base = merged.masked_fill(merged == float("-inf"), 0.0)
    out[:, :, part] = (out[:, :, part] * torch.exp(lse[:, :, part] - base)[..., None]
                       + o * torch.exp(block_lse - base)[..., None])
    lse[:, :, part] = merged


def _kernel_runs(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether the blocks run the Triton attention kernel: fused kernels on, Triton running on
    ``q``, no dropout (the kernel has none) and a head dim it takes; else the torch tiles."""
    return (dropout_p == 0 and dispatch.fused_kernels_on() and dispatch.triton_runs_on(q)
            and q.shape[-1] <= dispatch.triton_module("flash_attention").MAX_HEAD_DIM)


class _Block:
    """This rank's queries against the key/value block of CP rank ``source`` (of a ring of
    ``size``, sequence ``seq``): the torch tiles crop it by global index (``mine``, ``theirs``);
    the kernel runs on each pair of a query chunk and a key chunk with a token pair causality
    and the window allow (the masks inside decided by global index too)."""

    def __init__(self, seq, size, rank, source, window, device):
        self.window = window
        self.mine, self.theirs = chunk_indices(seq, size, rank, device), chunk_indices(seq, size, source, device)
        c = seq // (2 * size)
        self.pairs = [(rows, cols, q0, k0) for rows, q0 in _chunks(seq, size, rank)
                      for cols, k0 in _chunks(seq, size, source)
                      if k0 < q0 + c and (window is None or k0 + c - 1 >= q0 - window)]

    def forward(self, q, kv, doc_start, dropout_p, fused):
        """(query rows, output [b, h, rows, d], log-sum-exp [b, h, rows]) of each part of the block,
        in fp32 at least; q [L, b, h, d], kv [2, b, kv heads, L, d]."""
        if fused:
            flash, (k, v) = dispatch.triton_module("flash_attention"), kv.permute(0, 3, 1, 2, 4)
            for rows, cols, q0, k0 in self.pairs:
                o, lse = flash.block_attention(q[rows], k[cols], v[cols], q0, k0, _rows(doc_start, rows), self.window)
                yield rows, o.permute(1, 2, 0, 3), lse
            return
        crop = _crop(self.mine, self.theirs, self.window)
        if crop is None:
            return
        rows, cols = crop
        dt = torch.promote_types(q.dtype, torch.float32)  # fp32 at least (fp64 stays, for the tests)
        kb, vb = kv[0][:, :, cols].to(dt), kv[1][:, :, cols].to(dt)
        for part in _row_tiles(rows, cols, q):
            ok = _tile_mask(self.mine, self.theirs, doc_start, self.window, part, cols)
            yield (part, *_block_forward(q[part].permute(1, 2, 0, 3).to(dt), kb, vb, ok, q.shape[-1] ** -0.5,
                                         dropout_p))

    def backward(self, q, kv, dout, lse, delta, doc_start, dropout_p, fused, dq, dkv):
        """Add the block's share of the gradients to ``dq`` [b, h, L, d] and ``dkv`` [2, b, kv heads,
        L, d] (fp32 at least), given ``dout`` [L, b, h, d] and the merged output's log-sum-exp and
        delta = rowsum(dO * O) [b, h, L]."""
        if fused:
            flash, (k, v) = dispatch.triton_module("flash_attention"), kv.permute(0, 3, 1, 2, 4)
            for rows, cols, q0, k0 in self.pairs:
                grads = flash.block_attention_backward(q[rows], k[cols], v[cols], dout[rows], lse[:, :, rows],
                                                       delta[:, :, rows], q0, k0, _rows(doc_start, rows), self.window)
                for acc, g, index in zip((dq, dkv[0], dkv[1]), grads, (rows, cols, cols)):
                    acc[:, :, index] += g.permute(1, 2, 0, 3)
            return
        crop = _crop(self.mine, self.theirs, self.window)
        if crop is None:
            return
        rows, cols = crop
        dt, hk = dq.dtype, kv.shape[2]
        kb, vb = kv[0][:, :, cols].to(dt), kv[1][:, :, cols].to(dt)
        for part in _row_tiles(rows, cols, q):
            ok = _tile_mask(self.mine, self.theirs, doc_start, self.window, part, cols)
            dqb, dkb, dvb = _block_backward(q[part].permute(1, 2, 0, 3).to(dt), kb, vb,
                                            dout[part].permute(1, 2, 0, 3).to(dt), ok, lse[:, :, part],
                                            delta[:, :, part], q.shape[-1] ** -0.5, dropout_p)
            dq[:, :, part] += dqb
            dkv[0][:, :, cols] += _group_sum(dkb, hk)
            dkv[1][:, :, cols] += _group_sum(dvb, hk)


def _rows(doc_start, rows):
    """The document starts of the query rows ``rows`` (None without documents)."""
    return None if doc_start is None else doc_start[:, rows]


class _Ring:
    """Point-to-point exchange with the ring neighbours (every CP rank calls it alike)."""

    def __init__(self):
        s = state.get()
        self.rank, self.size, self.group = s.cp_rank, s.cp_size, s.cp_group
        if self.size > 1:
            self.next, self.prev = s.cp_ranks[(s.cp_rank + 1) % s.cp_size], s.cp_ranks[(s.cp_rank - 1) % s.cp_size]

    def source(self, step: int) -> int:
        """The CP rank whose key/value block this rank holds at ``step``."""
        return (self.rank - step) % self.size

    def start(self, t: torch.Tensor, tag: int):
        """Send ``t`` on, receive the previous rank's into a new tensor: (requests, buffer).
        A ring of one passes ``t`` to itself."""
        if self.size == 1:
            return [], t
        buf = torch.empty_like(t)
        ops = [dist.P2POp(dist.isend, t, self.next, self.group, tag),
               dist.P2POp(dist.irecv, buf, self.prev, self.group, tag)]
        return dist.batch_isend_irecv(ops), buf


def _finish(pending) -> torch.Tensor:
    reqs, buf = pending
    for r in reqs:
        r.wait()
    return buf


KV_TAG, GRAD_TAG = 1, 2


def _generator_state(device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_generator_state(device, saved) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(saved, device)
    else:
        torch.set_rng_state(saved)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc_start, window, dropout_p):
        ring = _Ring()
        ctx.rng = _generator_state(q.device) if dropout_p > 0 else None  # the backward redraws the same masks
        ctx.fused = _kernel_runs(q, dropout_p)
        seq = q.shape[0] * ring.size
        dt = torch.promote_types(q.dtype, torch.float32)
        kv = torch.stack([k, v]).permute(0, 2, 3, 1, 4).contiguous()  # [2, b, hk, L, d], travels the ring
        out = torch.zeros(q.permute(1, 2, 0, 3).shape, dtype=dt, device=q.device)  # [b, h, L, d]
        lse = torch.full(out.shape[:3], float("-inf"), dtype=dt, device=q.device)
        for step in range(ring.size):
            pending = ring.start(kv, KV_TAG) if step < ring.size - 1 else None
            block = _Block(seq, ring.size, ring.rank, ring.source(step), window, q.device)
            for part, o, block_lse in block.forward(q, kv, doc_start, dropout_p, ctx.fused):
                _merge(out, lse, part, o, block_lse)
            if pending is not None:
                kv = _finish(pending)
        ctx.save_for_backward(q, k, v, out, lse, doc_start)
        ctx.window, ctx.dropout_p = window, dropout_p
        return out.permute(2, 0, 1, 3).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        devices = [dout.device] if dout.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=ctx.rng is not None):
            if ctx.rng is not None:
                _set_generator_state(dout.device, ctx.rng)
            return _RingAttention._backward(ctx, dout)

    @staticmethod
    def _backward(ctx, dout):
        q, k, v, out, lse, doc_start = ctx.saved_tensors
        ring = _Ring()
        seq = q.shape[0] * ring.size
        delta = (dout.permute(1, 2, 0, 3).to(out.dtype) * out).sum(-1)  # [b, h, L]
        dq = torch.zeros_like(out)
        kv = torch.stack([k, v]).permute(0, 2, 3, 1, 4).contiguous()
        dkv = torch.zeros(kv.shape, dtype=out.dtype, device=kv.device)  # travels with its block, one step behind
        grads_pending = None
        for step in range(ring.size):
            kv_pending = ring.start(kv, KV_TAG) if step < ring.size - 1 else None
            block = torch.zeros_like(dkv)
            _Block(seq, ring.size, ring.rank, ring.source(step), ctx.window, q.device).backward(
                q, kv, dout, lse, delta, doc_start, ctx.dropout_p, ctx.fused, dq, block)
            if grads_pending is not None:
                dkv = _finish(grads_pending)
            dkv = dkv + block
            grads_pending = ring.start(dkv, GRAD_TAG)  # on to the next holder of this block (its owner, at the end)
            if kv_pending is not None:
                kv = _finish(kv_pending)
        dkv = _finish(grads_pending).permute(0, 3, 1, 2, 4)  # [2, L, b, hk, d]
        return dq.permute(2, 0, 1, 3).to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_start: Optional[torch.Tensor] = None,
                   window: Optional[int] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention of this CP rank's queries over the whole sequence. q [L, b, h, d] and
    k/v [L, b, kv heads, d] hold the rank's two chunks (``chunk_indices``); ``doc_start`` [b, L]
    from ``document_starts`` keeps attention inside documents; ``window`` as in
    ``reference.attention``; ``dropout_p`` drops attention probabilities with masks drawn from
    the current generator (the caller's per-rank stream). Returns [L, b, h, d]."""
    return _RingAttention.apply(q, k, v, doc_start, window, dropout_p)

