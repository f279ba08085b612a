"""Causal flash attention (forward and backward) in Triton, with grouped-query heads,
optional document masking for packed sequences, and blocks of a longer sequence.

Tensors stay in the model's [seq, batch, heads, dim] layout (any strides with a unit last
one, so q/k/v may be views of the fused QKV output). The forward walks key blocks with an
online softmax and keeps only the per-row log-sum-exp (base 2) for the backward; blocks
wholly below the diagonal skip the mask. The backward, as in FlashAttention-2, runs two
kernels without atomics: one per key block accumulates dK and dV over all query blocks and
over the query heads sharing that key/value head, one per query block accumulates dQ.
With document starts a query sees only keys of its own document, and whole key blocks
before the document (or query blocks after it) are skipped. With a sliding ``window`` a
query sees itself and the ``window`` keys before it; key blocks wholly before the window of
a query block (query blocks wholly past the reach of a key block) are skipped, so the cost
grows with seq x window rather than seq^2.

Every mask is decided on global token indices: the queries are tokens ``q_start`` onwards of
the sequence and the keys tokens ``k_start`` onwards. ``attention`` is the whole sequence
(both 0); ring attention (megalite.parallel.context) calls ``block_attention`` and
``block_attention_backward`` on one chunk of queries and one chunk of keys at a time, merges
the blocks' outputs by their log-sum-exps and differentiates each block with the merged
log-sum-exp. Reference: ``reference.attention``.
"""

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from megalite.kernels.reference import document_starts

# (BLOCK_M, BLOCK_N, warps) per kernel, for head dims up to 64 and up to 128 (H100-sized tiles).
FORWARD = {64: (128, 64, 4), 128: (128, 64, 8)}
BACKWARD_DKDV = {64: (32, 128, 4), 128: (32, 128, 8)}
BACKWARD_DQ = {64: (128, 32, 4), 128: (128, 32, 8)}
STAGES = 3
MAX_HEAD_DIM = 128


@triton.jit
def _scores(q, K, V, k_base, v_base, stride_ks, stride_vs, rows, start_n, doc_start, window, SK, K0, scale_log2,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
            MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """One key block: (k, v, q.k scaled to base 2 with disallowed pairs at -inf); ``rows`` are
    the queries' global indices, the keys' are K0 + their own."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < SK) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        cols = K0 + offs_n
        allowed = (rows[:, None] >= cols[None, :]) & (offs_n[None, :] < SK)
        if HAS_DOCS:
            allowed = allowed & (cols[None, :] >= doc_start[:, None])
        if HAS_WINDOW:
            allowed = allowed & (cols[None, :] >= rows[:, None] - window)
        s = tl.where(allowed, s, float("-inf"))
    return k, v, s


@triton.jit
def _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, rows, doc_start, window, lo, hi,
                    SK, K0, scale_log2, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                    MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _scores(q, K, V, k_base, v_base, stride_ks, stride_vs, rows, start_n, doc_start, window, SK, K0,
                          scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, MASKED, HAS_DOCS, HAS_WINDOW, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, rows, doc_start, window, lo, hi,
               SK, K0, scale_log2, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _scores(q, K, V, k_base, v_base, stride_ks, stride_vs, rows, start_n, doc_start, window, SK, K0,
                          scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, MASKED, HAS_DOCS, HAS_WINDOW, PRECISION)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _query_block(Q, stride_qs, q_base, offs_m, SQ, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < SQ) & (offs_d[None, :] < HEAD_DIM)
    return tl.load(Q + q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=mask, other=0.0), mask


@triton.jit
def _key_range(DOC_START, b, offs_m, block_m, window, SQ, SK, Q0, K0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Which keys a query block visits: (each query's document start, its own index without
    documents; the first key to visit; the first key that needs the mask; the end of the keys).
    Without documents or a window, the whole key blocks before the block's first query are
    seen by all its queries, unmasked; with them, every visited block is masked, from the
    block holding the earliest document start or the window's reach before the first query."""
    first_query = Q0 + block_m * BLOCK_M
    end = tl.minimum(tl.maximum(Q0 + tl.minimum((block_m + 1) * BLOCK_M, SQ) - K0, 0), SK)
    if HAS_DOCS:
        doc_start = tl.load(DOC_START + b * SQ + offs_m, mask=offs_m < SQ, other=Q0 + SQ)
        first = tl.min(doc_start, axis=0)
    else:
        doc_start = Q0 + offs_m
        first = K0
    if HAS_WINDOW:
        first = tl.maximum(first, first_query - window)
    if HAS_DOCS or HAS_WINDOW:
        lo = (tl.minimum(tl.maximum(first - K0, 0), SK) // BLOCK_N) * BLOCK_N
        masked_from = lo
    else:
        lo = 0
        masked_from = (tl.minimum(tl.maximum(first_query - K0, 0), SK) // BLOCK_N) * BLOCK_N
    return doc_start, lo, masked_from, end


@triton.jit
def _attention_forward(Q, K, V, O, LSE, DOC_START, stride_qs, stride_qb, stride_qh, stride_ks, stride_kb, stride_kh,
                       stride_vs, stride_vb, stride_vh, stride_os, stride_ob, stride_oh, SQ, SK, Q0, K0, HQ, GROUP,
                       window, scale_log2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       HEAD_DIM: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                       PRECISION: tl.constexpr):
    block_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    k_base = b * stride_kb + (h // GROUP) * stride_kh
    v_base = b * stride_vb + (h // GROUP) * stride_vh
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = Q0 + offs_m
    q, q_mask = _query_block(Q, stride_qs, b * stride_qb + h * stride_qh, offs_m, SQ, BLOCK_D, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a row whose keys are all masked so far stays 0
    doc_start, lo, masked_from, end = _key_range(DOC_START, b, offs_m, block_m, window, SQ, SK, Q0, K0, BLOCK_M,
                                                 BLOCK_N, HAS_DOCS, HAS_WINDOW)
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, rows, doc_start,
                                    window, lo, masked_from, SK, K0, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, False,
                                    False, False, PRECISION)
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, K, V, k_base, v_base, stride_ks, stride_vs, rows, doc_start,
                                    window, masked_from, end, SK, K0, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, True,
                                    HAS_DOCS, HAS_WINDOW, PRECISION)
    offs_d = tl.arange(0, BLOCK_D)
    out = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    l_safe = tl.maximum(l_i, 1.0e-30)
    tl.store(out, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=q_mask)
    # a row that may see no key of this block (only in a block of a longer sequence) has output 0, lse -inf
    tl.store(LSE + bh * SQ + offs_m, tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf")), mask=offs_m < SQ)


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
                           stride_dqs, stride_dqb, stride_dqh, SQ, SK, Q0, K0, HQ, GROUP, window, scale, scale_log2,
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
    rows = Q0 + offs_m
    q, q_mask = _query_block(Q, stride_qs, b * stride_qb + h * stride_qh, offs_m, SQ, BLOCK_D, HEAD_DIM)
    do, _ = _query_block(DO, stride_dos, b * stride_dob + h * stride_doh, offs_m, SQ, BLOCK_D, HEAD_DIM)
    lse = tl.load(LSE + bh * SQ + offs_m, mask=offs_m < SQ, other=0.0)
    delta = tl.load(DELTA + bh * SQ + offs_m, mask=offs_m < SQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    doc_start, lo, masked_from, end = _key_range(DOC_START, b, offs_m, block_m, window, SQ, SK, Q0, K0, BLOCK_M,
                                                 BLOCK_N, HAS_DOCS, HAS_WINDOW)
    dq = _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, rows, doc_start, window, lo,
                    masked_from, SK, K0, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, False, False, False, PRECISION)
    dq = _dq_blocks(dq, q, do, lse, delta, K, V, k_base, v_base, stride_ks, stride_vs, rows, doc_start, window,
                    masked_from, end, SK, K0, scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, True, HAS_DOCS, HAS_WINDOW,
                    PRECISION)
    offs_d = tl.arange(0, BLOCK_D)
    out = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :]
    tl.store(out, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, doc_base, stride_qs,
                 stride_dos, cols, window, lo, hi, SQ, Q0, scale_log2, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Add to dK, dV [BLOCK_N, D] the contributions of query blocks lo..hi of one query head;
    ``cols`` are the keys' global indices. Works on the transposed scores (keys x queries) so
    no tile needs transposing twice."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, _ = _query_block(Q, stride_qs, q_base, offs_m, SQ, BLOCK_D, HEAD_DIM)
        do, _ = _query_block(DO, stride_dos, do_base, offs_m, SQ, BLOCK_D, HEAD_DIM)
        lse = tl.load(LSE + row_base + offs_m, mask=offs_m < SQ, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < SQ, other=0.0)
        p_t = tl.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale_log2 - lse[None, :])
        if MASKED:
            rows = Q0 + offs_m
            allowed = (rows[None, :] >= cols[:, None]) & (offs_m[None, :] < SQ)
            if HAS_DOCS:
                doc_start = tl.load(DOC_START + doc_base + offs_m, mask=offs_m < SQ, other=Q0 + SQ)
                allowed = allowed & (cols[:, None] >= doc_start[None, :])
            if HAS_WINDOW:
                allowed = allowed & (cols[:, None] >= rows[None, :] - window)
            p_t = tl.where(allowed, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attention_backward_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DOC_START, QUERIES_END, stride_qs, stride_qb, stride_qh,
                             stride_ks, stride_kb, stride_kh, stride_vs, stride_vb, stride_vh, stride_dos, stride_dob,
                             stride_doh, stride_dks, stride_dkb, stride_dkh, SQ, SK, Q0, K0, HQ, HK, GROUP, window,
                             scale, scale_log2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             HEAD_DIM: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                             PRECISION: tl.constexpr):
    block_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // HK).to(tl.int64)
    hk = (bhk % HK).to(tl.int64)
    offs_n = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = K0 + offs_n
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < SK) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask,
                other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask,
                other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    last_key = K0 + tl.minimum((block_n + 1) * BLOCK_N, SK) - 1
    first_query = tl.minimum(tl.maximum(K0 + block_n * BLOCK_N - Q0, 0), SQ)  # causal: no earlier query sees these keys
    # the queries from here on see every key of the block; the masked query blocks end just past it
    diagonal_end = tl.minimum(tl.maximum(last_key + 1 - Q0, 0), SQ)
    masked_end = first_query + tl.cdiv(diagonal_end - first_query, BLOCK_M) * BLOCK_M
    queries_end = SQ  # no query past the last document these keys belong to, or past the window's reach, sees them
    if HAS_DOCS:
        queries_end = tl.load(QUERIES_END + b * tl.num_programs(0) + block_n)
    if HAS_WINDOW:
        queries_end = tl.minimum(queries_end, tl.maximum(last_key + window + 1 - Q0, 0))
    for g in range(GROUP):  # every query head reading this key/value head
        h = hk * GROUP + g
        q_base = b * stride_qb + h * stride_qh
        do_base = b * stride_dob + h * stride_doh
        row_base = (b * HQ + h) * SQ
        if HAS_DOCS or HAS_WINDOW:
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, b * SQ,
                                  stride_qs, stride_dos, cols, window, first_query, queries_end, SQ, Q0, scale_log2,
                                  BLOCK_M, BLOCK_D, HEAD_DIM, True, HAS_DOCS, HAS_WINDOW, PRECISION)
        else:
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, b * SQ,
                                  stride_qs, stride_dos, cols, window, first_query, masked_end, SQ, Q0, scale_log2,
                                  BLOCK_M, BLOCK_D, HEAD_DIM, True, False, False, PRECISION)
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, DOC_START, q_base, do_base, row_base, b * SQ,
                                  stride_qs, stride_dos, cols, window, masked_end, SQ, SQ, Q0, scale_log2,
                                  BLOCK_M, BLOCK_D, HEAD_DIM, False, False, False, PRECISION)
    out = b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


def _tiles(table: dict, head_dim: int):
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"the Triton attention kernel supports head dims up to {MAX_HEAD_DIM}, not {head_dim}")
    return table[64 if head_dim <= 64 else 128]


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _meta(q: torch.Tensor, doc_start, window) -> dict:
    dim = q.shape[-1]
    return dict(BLOCK_D=max(16, triton.next_power_of_2(dim)), HEAD_DIM=dim, HAS_DOCS=doc_start is not None,
                HAS_WINDOW=window is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def _forward(q, k, v, doc_start, window, q_start, k_start, out_dtype):
    """(output [SQ, b, h, d] in ``out_dtype``, base-2 log-sum-exp [b, h, SQ] fp32) of queries
    ``q_start``.. over keys ``k_start``.. (global indices); ``doc_start`` [b, SQ] global."""
    sq, batch, hq, dim = q.shape
    o = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    lse = torch.empty(batch, hq, sq, dtype=torch.float32, device=q.device)
    block_m, block_n, warps = _tiles(FORWARD, dim)
    _attention_forward[(triton.cdiv(sq, block_m), batch * hq)](
        q, k, v, o, lse, lse if doc_start is None else doc_start, *_strides(q), *_strides(k), *_strides(v),
        *_strides(o), sq, k.shape[0], q_start, k_start, hq, hq // k.shape[2], window or 0,
        math.log2(math.e) / math.sqrt(dim), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=STAGES,
        **_meta(q, doc_start, window))
    return o, lse


def _queries_end(doc_start: torch.Tensor, k_start: int, sk: int, block_n: int) -> torch.Tensor:
    """[b, key blocks] int32: where the queries end that may share a document with a key of each
    block of ``block_n`` keys: the first query from which every document starts past the block."""
    ends = torch.arange(1, triton.cdiv(sk, block_n) + 1, device=doc_start.device) * block_n
    last = (k_start + ends.clamp(max=sk) - 1).to(doc_start.dtype).expand(doc_start.shape[0], -1).contiguous()
    later = doc_start.flip(-1).cummin(-1).values.flip(-1).contiguous()  # earliest start from each query on: ascending
    return torch.searchsorted(later, last, right=True).to(torch.int32)


def _backward(q, k, v, do, lse, delta, doc_start, window, q_start, k_start, grad_dtype):
    """(dq, dk, dv) in ``grad_dtype`` from the base-2 log-sum-exp and delta [b, h, SQ] fp32
    contiguous (those of the whole row when this is one block of it); arguments as ``_forward``."""
    sq, batch, hq, dim = q.shape
    sk, hk = k.shape[0], k.shape[2]
    meta = _meta(q, doc_start, window)
    dq = torch.empty(q.shape, dtype=grad_dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=grad_dtype, device=k.device)
    dv = torch.empty_like(dk)
    scales = (1.0 / math.sqrt(dim), math.log2(math.e) / math.sqrt(dim))
    block_m, block_n, warps = _tiles(BACKWARD_DKDV, dim)
    docs = (lse, lse) if doc_start is None else (doc_start, _queries_end(doc_start, k_start, sk, block_n))
    _attention_backward_dkdv[(triton.cdiv(sk, block_n), batch * hk)](
        q, k, v, do, lse, delta, dk, dv, *docs, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dk), sq, sk, q_start, k_start, hq, hk, hq // hk, window or 0, *scales, BLOCK_M=block_m,
        BLOCK_N=block_n, num_warps=warps, num_stages=STAGES, **meta)
    block_m, block_n, warps = _tiles(BACKWARD_DQ, dim)
    _attention_backward_dq[(triton.cdiv(sq, block_m), batch * hq)](
        q, k, v, do, lse, delta, dq, docs[0], *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dq), sq, sk, q_start, k_start, hq, hq // hk, window or 0, *scales, BLOCK_M=block_m,
        BLOCK_N=block_n, num_warps=warps, num_stages=STAGES, **meta)
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc_start, window):
        q, k, v = (_unit_last_stride(t) for t in (q, k, v))
        o, lse = _forward(q, k, v, doc_start, window, 0, 0, q.dtype)
        ctx.save_for_backward(q, k, v, o, lse, doc_start)
        ctx.window = window
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, doc_start = ctx.saved_tensors
        do = _unit_last_stride(do)
        seq, batch, hq, dim = q.shape
        delta = torch.empty_like(lse)
        _attention_delta[(triton.cdiv(seq, 64), batch * hq)](
            o, do, delta, *_strides(o), *_strides(do), seq, hq, BLOCK_M=64, BLOCK_D=_meta(q, None, None)["BLOCK_D"],
            HEAD_DIM=dim, num_warps=4)
        return *_backward(q, k, v, do, lse, delta, doc_start, ctx.window, 0, 0, q.dtype), None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None,
              window: Optional[int] = None) -> torch.Tensor:
    """Causal attention, q [seq, batch, heads, dim], k/v [seq, batch, kv_heads, dim] -> like q; each
    query sees only the ``window`` keys before it (and itself) when a window is given."""
    seq, batch = q.shape[:2]
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
    doc_start = None if cu_seqlens is None else document_starts(cu_seqlens.to(q.device), seq, batch).contiguous()
    return _FlashAttention.apply(q, k, v, doc_start, window)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, k_start: int,
                    doc_start: Optional[torch.Tensor] = None, window: Optional[int] = None):
    """One block of causal attention over a longer sequence: queries q [SQ, b, h, d] are its
    tokens ``q_start``.., keys and values k/v [SK, b, kv heads, d] its tokens ``k_start``..;
    ``doc_start`` [b, SQ] the global index where each query's document begins. Returns the
    block's output [SQ, b, h, d] and natural log-sum-exp [b, h, SQ] in fp32 at least; a query
    that may see no key of the block gets output 0 and log-sum-exp -inf."""
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    docs = None if doc_start is None else doc_start.to(torch.int32).contiguous()
    o, lse = _forward(q, k, v, docs, window, q_start, k_start, torch.promote_types(q.dtype, torch.float32))
    return o, lse * math.log(2.0)


def block_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
                             delta: torch.Tensor, q_start: int, k_start: int, doc_start: Optional[torch.Tensor] = None,
                             window: Optional[int] = None):
    """The gradients (dq, dk, dv, fp32 at least) of one block (arguments as ``block_attention``)
    given ``do`` [SQ, b, h, d] (in q's dtype), the merged output's natural log-sum-exp ``lse`` and
    ``delta`` = rowsum(dO * O) [b, h, SQ]: each block's probabilities are recomputed from the
    whole row's log-sum-exp, so the blocks' gradients add up to the row's."""
    q, k, v, do = (_unit_last_stride(t) for t in (q, k, v, do))
    docs = None if doc_start is None else doc_start.to(torch.int32).contiguous()
    return _backward(q, k, v, do, (lse / math.log(2.0)).float().contiguous(), delta.float().contiguous(), docs,
                     window, q_start, k_start, torch.promote_types(q.dtype, torch.float32))
