"""Causal flash attention (forward and backward) in Triton, with grouped-query heads and
optional document masking for packed sequences.

Tensors stay in the model's [seq, batch, heads, dim] layout (any strides with a unit last
one, so q/k/v may be views of the fused QKV output). The forward walks key blocks with an
online softmax and keeps only the per-row log-sum-exp (base 2) for the backward; blocks
wholly below the diagonal skip the mask. The backward, as in FlashAttention-2, runs two
kernels without atomics: one per key block accumulates dK and dV over all query blocks and
over the query heads sharing that key/value head, one per query block accumulates dQ.
With ``cu_seqlens`` a query sees only keys of its own document, and whole key blocks
before the document (or query blocks after it) are skipped. With a sliding ``window`` a
query sees itself and the ``window`` keys before it; key blocks wholly before the window of
a query block (query blocks wholly past the reach of a key block) are skipped, so the cost
grows with seq x window rather than seq^2. Reference: ``reference.attention``.
"""

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from megalite.kernels.reference import document_bounds

# (BLOCK_M, BLOCK_N, warps) per kernel, for head dims up to 64 and up to 128 (H100-sized tiles).
FORWARD = {64: (128, 64, 4), 128: (128, 64, 8)}
BACKWARD_DKDV = {64: (32, 128, 4), 128: (32, 128, 8)}
BACKWARD_DQ = {64: (128, 32, 4), 128: (128, 32, 8)}
STAGES = 3


@triton.jit
def _scores(q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, start_n, doc_start, window, S, scale_log2,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
            MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """One key block: (k, v, q.k scaled to base 2 with disallowed pairs at -inf)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        allowed = (offs_m[:, None] >= offs_n[None, :]) & (offs_n[None, :] < S)
        if HAS_DOCS:
            allowed = allowed & (offs_n[None, :] >= doc_start[:, None])
        if HAS_WINDOW:
            allowed = allowed & (offs_n[None, :] >= offs_m[:, None] - window)
        s = tl.where(allowed, s, float("-inf"))
    return k, v, s


@triton.jit
def _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, doc_start, window, lo, hi,
                    S, scale_log2, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                    MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _scores(q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, start_n, doc_start, window, S,
                          scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, MASKED, HAS_DOCS, HAS_WINDOW, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, doc_start, window, lo, hi,
               S, scale_log2, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _scores(q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, start_n, doc_start, window, S,
                          scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, MASKED, HAS_DOCS, HAS_WINDOW, PRECISION)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _query_block(Q, stride_qs, q_base, offs_m, S, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < S) & (offs_d[None, :] < HEAD_DIM)
    return tl.load(Q + q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=mask, other=0.0), mask


@triton.jit
def _first_key(DOC_START, b, offs_m, block_m, window, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(each query's document start, or its index without documents; the key block where the
    query block's keys begin): the earliest document start, or the window's reach before the
    block's first query."""
    if HAS_DOCS:
        doc_start = tl.load(DOC_START + b * S + offs_m, mask=offs_m < S, other=S)
        first = tl.min(doc_start, axis=0)
    else:
        doc_start = offs_m
        first = 0
    if HAS_WINDOW:
        first = tl.maximum(first, block_m * BLOCK_M - window)
    return doc_start, (first // BLOCK_N) * BLOCK_N


@triton.jit
def _attention_forward(Q, K, V, O, LSE, DOC_START, stride_qs, stride_qb, stride_qh, stride_ks, stride_kb, stride_kh,
                       stride_vs, stride_vb, stride_vh, stride_os, stride_ob, stride_oh, S, HQ, GROUP, window,
                       scale_log2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       HEAD_DIM: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                       PRECISION: tl.constexpr):
    block_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    k_base = b * stride_kb + (h // GROUP) * stride_kh
    v_base = b * stride_vb + (h // GROUP) * stride_vh
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q, q_mask = _query_block(Q, stride_qs, b * stride_qb + h * stride_qh, offs_m, S, BLOCK_D, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a row whose keys are all masked so far stays 0
    diagonal_end = tl.minimum((block_m + 1) * BLOCK_M, S)
    if HAS_DOCS or HAS_WINDOW:  # every block masked, from the first key any query of the block may see
        doc_start, lo = _first_key(DOC_START, b, offs_m, block_m, window, S, BLOCK_M, BLOCK_N, HAS_DOCS, HAS_WINDOW)
        acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m,
                                        doc_start, window, lo, diagonal_end, S, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM,
                                        True, HAS_DOCS, HAS_WINDOW, PRECISION)
    else:
        acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, offs_m,
                                        window, 0, block_m * BLOCK_M, S, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, False,
                                        False, False, PRECISION)
        acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, offs_m,
                                        window, block_m * BLOCK_M, diagonal_end, S, scale_log2, BLOCK_N, BLOCK_D,
                                        HEAD_DIM, True, False, False, PRECISION)
    l_i = tl.maximum(l_i, 1.0e-30)  # only padding rows past the end have no keys
    offs_d = tl.arange(0, BLOCK_D)
    out = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(out, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + bh * S + offs_m, m_i + tl.log2(l_i), mask=offs_m < S)


@triton.jit
def _attention_delta(O, DO, DELTA, stride_os, stride_ob, stride_oh, stride_dos, stride_dob, stride_doh, S, HQ,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr):
    """delta = rowsum(dO * O), the softmax backward's correction term."""
    block_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o, _ = _query_block(O, stride_os, b * stride_ob + h * stride_oh, offs_m, S, BLOCK_D, HEAD_DIM)
    do, _ = _query_block(DO, stride_dos, b * stride_dob + h * stride_doh, offs_m, S, BLOCK_D, HEAD_DIM)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh * S + offs_m, delta, mask=offs_m < S)


@triton.jit
def _attention_backward_dq(Q, K, V, DO, LSE, DELTA, DQ, DOC_START, stride_qs, stride_qb, stride_qh, stride_ks,
                           stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_dos, stride_dob, stride_doh,
                           stride_dqs, stride_dqb, stride_dqh, S, HQ, GROUP, window, scale, scale_log2,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           HEAD_DIM: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                           PRECISION: tl.constexpr):
    block_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    k_base = b * stride_kb + (h // GROUP) * stride_kh
    v_base = b * stride_vb + (h // GROUP) * stride_vh
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q, q_mask = _query_block(Q, stride_qs, b * stride_qb + h * stride_qh, offs_m, S, BLOCK_D, HEAD_DIM)
    do, _ = _query_block(DO, stride_dos, b * stride_dob + h * stride_doh, offs_m, S, BLOCK_D, HEAD_DIM)
    lse = tl.load(LSE + bh * S + offs_m, mask=offs_m < S, other=0.0)
    delta = tl.load(DELTA + bh * S + offs_m, mask=offs_m < S, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diagonal_end = tl.minimum((block_m + 1) * BLOCK_M, S)
    if HAS_DOCS or HAS_WINDOW:
        doc_start, lo = _first_key(DOC_START, b, offs_m, block_m, window, S, BLOCK_M, BLOCK_N, HAS_DOCS, HAS_WINDOW)
        dq = _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, doc_start, window,
                        lo, diagonal_end, S, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, True, HAS_DOCS, HAS_WINDOW,
                        PRECISION)
    else:
        dq = _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, offs_m, window, 0,
                        block_m * BLOCK_M, S, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, False, False, False, PRECISION)
        dq = _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, offs_m, offs_m, window,
                        block_m * BLOCK_M, diagonal_end, S, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, True, False,
                        False, PRECISION)
    offs_d = tl.arange(0, BLOCK_D)
    out = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :]
    tl.store(out, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, doc_base, stride_qs,
                 stride_dos, offs_n, window, lo, hi, S, scale_log2, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Add to dK, dV [BLOCK_N, D] the contributions of query blocks lo..hi of one query head.
    Works on the transposed scores (keys x queries) so no tile needs transposing twice."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, _ = _query_block(Q, stride_qs, q_base, offs_m, S, BLOCK_D, HEAD_DIM)
        do, _ = _query_block(DO, stride_dos, do_base, offs_m, S, BLOCK_D, HEAD_DIM)
        lse = tl.load(LSE + row_base + offs_m, mask=offs_m < S, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < S, other=0.0)
        p_t = tl.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale_log2 - lse[None, :])
        if MASKED:
            allowed = (offs_m[None, :] >= offs_n[:, None]) & (offs_m[None, :] < S)
            if HAS_DOCS:
                doc_start = tl.load(DOC_START + doc_base + offs_m, mask=offs_m < S, other=S)
                allowed = allowed & (offs_n[:, None] >= doc_start[None, :])
            if HAS_WINDOW:
                allowed = allowed & (offs_n[:, None] >= offs_m[None, :] - window)
            p_t = tl.where(allowed, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attention_backward_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DOC_START, DOC_END, stride_qs, stride_qb, stride_qh,
                             stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_dos, stride_dob,
                             stride_doh, stride_dks, stride_dkb, stride_dkh, S, HQ, HK, GROUP, window, scale,
                             scale_log2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             HEAD_DIM: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                             PRECISION: tl.constexpr):
    block_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // HK).to(tl.int64)
    hk = (bhk % HK).to(tl.int64)
    offs_n = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask,
                other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask,
                other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    first_query = block_n * BLOCK_N  # causal: no earlier query sees these keys
    diagonal_end = tl.minimum(first_query + BLOCK_N, S)
    queries_end = S  # no query past the last document these keys belong to, or past the window's reach, sees them
    if HAS_DOCS:
        queries_end = tl.max(tl.load(DOC_END + b * S + offs_n, mask=offs_n < S, other=0), axis=0)
    if HAS_WINDOW:
        queries_end = tl.minimum(queries_end, first_query + BLOCK_N + window)
    for g in range(GROUP):  # every query head reading this key/value head
        h = hk * GROUP + g
        q_base = b * stride_qb + h * stride_qh
        do_base = b * stride_dob + h * stride_doh
        row_base = (b * HQ + h) * S
        if HAS_DOCS or HAS_WINDOW:
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, b * S,
                                  stride_qs, stride_dos, offs_n, window, first_query, queries_end, S, scale_log2,
                                  BLOCK_M, BLOCK_D, HEAD_DIM, True, HAS_DOCS, HAS_WINDOW, PRECISION)
        else:
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, b * S,
                                  stride_qs, stride_dos, offs_n, window, first_query, diagonal_end, S, scale_log2,
                                  BLOCK_M, BLOCK_D, HEAD_DIM, True, False, False, PRECISION)
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, b * S,
                                  stride_qs, stride_dos, offs_n, window, diagonal_end, S, S, scale_log2,
                                  BLOCK_M, BLOCK_D, HEAD_DIM, False, False, False, PRECISION)
    out = b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


def _tiles(table: dict, head_dim: int):
    if head_dim > 128:
        raise ValueError(f"the Triton attention kernel supports head dims up to 128, not {head_dim}")
    return table[64 if head_dim <= 64 else 128]


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc_start, doc_end, window):
        q, k, v = (_unit_last_stride(t) for t in (q, k, v))
        seq, batch, hq, dim = q.shape
        hk = k.shape[2]
        scale = 1.0 / math.sqrt(dim)
        o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(batch, hq, seq, dtype=torch.float32, device=q.device)
        block_m, block_n, warps = _tiles(FORWARD, dim)
        meta = ctx.meta = dict(BLOCK_D=max(16, triton.next_power_of_2(dim)), HEAD_DIM=dim,
                               HAS_DOCS=doc_start is not None, HAS_WINDOW=window is not None,
                               PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
        docs = doc_start if doc_start is not None else lse  # an unread placeholder without documents
        _attention_forward[(triton.cdiv(seq, block_m), batch * hq)](
            q, k, v, o, lse, docs, *_strides(q), *_strides(k), *_strides(v), *_strides(o), seq, hq, hq // hk,
            window or 0, scale * math.log2(math.e), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
            num_stages=STAGES, **meta)
        ctx.save_for_backward(q, k, v, o, lse, doc_start, doc_end)
        ctx.scale, ctx.window = scale, window or 0
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, doc_start, doc_end = ctx.saved_tensors
        do = _unit_last_stride(do)
        seq, batch, hq, dim = q.shape
        hk = k.shape[2]
        meta, scale = ctx.meta, ctx.scale
        delta = torch.empty_like(lse)
        _attention_delta[(triton.cdiv(seq, 64), batch * hq)](
            o, do, delta, *_strides(o), *_strides(do), seq, hq, BLOCK_M=64, BLOCK_D=meta["BLOCK_D"],
            HEAD_DIM=dim, num_warps=4)
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.empty_like(dk)
        docs = (doc_start, doc_end) if doc_start is not None else (lse, lse)
        args = (scale, scale * math.log2(math.e))
        block_m, block_n, warps = _tiles(BACKWARD_DKDV, dim)
        _attention_backward_dkdv[(triton.cdiv(seq, block_n), batch * hk)](
            q, k, v, do, lse, delta, dk, dv, *docs, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dk), seq, hq, hk, hq // hk, ctx.window, *args, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
            num_stages=STAGES, **meta)
        block_m, block_n, warps = _tiles(BACKWARD_DQ, dim)
        _attention_backward_dq[(triton.cdiv(seq, block_m), batch * hq)](
            q, k, v, do, lse, delta, dq, docs[0], *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dq), seq, hq, hq // hk, ctx.window, *args, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
            num_stages=STAGES, **meta)
        return dq, dk, dv, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None,
              window: Optional[int] = None) -> torch.Tensor:
    """Causal attention, q [seq, batch, heads, dim], k/v [seq, batch, kv_heads, dim] -> like q; each
    query sees only the ``window`` keys before it (and itself) when a window is given."""
    seq, batch = q.shape[:2]
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
    doc_start = doc_end = None
    if cu_seqlens is not None:
        doc_start, doc_end = (t.contiguous() for t in document_bounds(cu_seqlens.to(q.device), seq, batch))
    return _FlashAttention.apply(q, k, v, doc_start, doc_end, window)
