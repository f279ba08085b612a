"""Rotary embedding of queries and keys in one Triton pass (rotate-half convention).

One program per token rotates every query head and every key head of that token, reading
its cos/sin row once. cos/sin may hold one row per position ([seq, 1, 1, rot]) or one per
token ([seq, batch, 1, rot]: position ids, e.g. restarting in each packed document); with
rot < head_dim the remaining dimensions are copied through (partial rotary). The backward
is the same rotation by the opposite angle. Reference: ``reference.rotary_qk``.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(X, OUT, x_offset, out_offset, stride_h, heads, cos1, cos2, sin1, sin2,
                  HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < heads) & (j < HALF)
    src = X + x_offset + h * stride_h + j
    dst = OUT + out_offset + h * HEAD_DIM + j
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst, (x1 * cos1 - x2 * sin1).to(OUT.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos2 + x1 * sin2).to(OUT.dtype.element_ty), mask=mask)
    if BLOCK_PASS > 0:  # partial rotary: the dimensions past 2 * HALF are copied
        p = tl.arange(0, BLOCK_PASS)[None, :]
        pmask = (h < heads) & (p < HEAD_DIM - 2 * HALF)
        rest = tl.load(X + x_offset + h * stride_h + 2 * HALF + p, mask=pmask)
        tl.store(OUT + out_offset + h * HEAD_DIM + 2 * HALF + p, rest, mask=pmask)


@triton.jit
def _rotary_qk(Q, K, COS, SIN, QO, KO, batch, q_heads, k_heads,
               stride_qs, stride_qb, stride_qh, stride_ks, stride_kb, stride_kh, stride_cs, stride_cb,
               HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
               BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr, INVERSE: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    s = token // batch
    b = token % batch
    j = tl.arange(0, BLOCK_HALF)
    angles = s * stride_cs + b * stride_cb + j
    cos1 = tl.load(COS + angles, mask=j < HALF, other=0.0).to(tl.float32)[None, :]
    cos2 = tl.load(COS + angles + HALF, mask=j < HALF, other=0.0).to(tl.float32)[None, :]
    sin1 = tl.load(SIN + angles, mask=j < HALF, other=0.0).to(tl.float32)[None, :]
    sin2 = tl.load(SIN + angles + HALF, mask=j < HALF, other=0.0).to(tl.float32)[None, :]
    if INVERSE:  # the transpose of the rotation: rotate back
        sin1, sin2 = -sin2, -sin1
    _rotate_heads(Q, QO, s * stride_qs + b * stride_qb, token * q_heads * HEAD_DIM, stride_qh, q_heads,
                  cos1, cos2, sin1, sin2, HEAD_DIM, HALF, BLOCK_HQ, BLOCK_HALF, BLOCK_PASS)
    _rotate_heads(K, KO, s * stride_ks + b * stride_kb, token * k_heads * HEAD_DIM, stride_kh, k_heads,
                  cos1, cos2, sin1, sin2, HEAD_DIM, HALF, BLOCK_HK, BLOCK_HALF, BLOCK_PASS)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _rotate(q, k, cos, sin, inverse):
    """Rotated copies of q [seq, batch, hq, d] and k [seq, batch, hk, d], contiguous."""
    q, k = _unit_last_stride(q), _unit_last_stride(k)
    seq, batch, hq, dim = q.shape
    hk = k.shape[2]
    rot = cos.shape[-1]
    cos = _unit_last_stride(cos.expand(seq, batch, 1, rot))
    sin = _unit_last_stride(sin.expand(seq, batch, 1, rot))
    assert sin.stride() == cos.stride(), "cos and sin must share one layout"
    qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    half = rot // 2
    block_half = triton.next_power_of_2(half)
    _rotary_qk[(seq * batch,)](q, k, cos, sin, qo, ko, batch, hq, hk,
                               q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                               cos.stride(0), cos.stride(1),
                               HEAD_DIM=dim, HALF=half, BLOCK_HQ=triton.next_power_of_2(hq),
                               BLOCK_HK=triton.next_power_of_2(hk), BLOCK_HALF=block_half,
                               BLOCK_PASS=triton.next_power_of_2(dim - rot) if dim > rot else 0,
                               INVERSE=inverse, num_warps=4)
    return qo, ko


class _RotaryQK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(q, k, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = _rotate(dq, dk, cos, sin, inverse=True)
        return dq, dk, None, None


def rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return _RotaryQK.apply(q, k, cos, sin)
