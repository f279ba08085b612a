"""Pure-torch versions of every fused kernel: the fallback path and the tests' oracle.

Each function has the same signature and result as its Triton twin in this package
(norm.py, rope.py, silu_mul.py, cross_entropy.py, flash_attention.py). Half-precision
inputs are computed in fp32; fp32 and fp64 inputs keep their precision, so the tests can
run these in float64.
"""

from typing import Optional

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None):
    """RMSNorm of ``x`` (or of ``x + residual``, then returning (normed, x + residual))."""
    if residual is not None:
        total = x + residual
        return rms_norm(total, weight, eps), total
    dt = compute_dtype(x)
    return F.rms_norm(x.to(dt), (x.shape[-1],), weight.to(dt), eps).to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               residual: Optional[torch.Tensor] = None):
    """LayerNorm of ``x`` (or of ``x + residual``, then returning (normed, x + residual))."""
    if residual is not None:
        total = x + residual
        return layer_norm(total, weight, bias, eps), total
    dt = compute_dtype(x)
    return F.layer_norm(x.to(dt), (x.shape[-1],), weight.to(dt), bias.to(dt), eps).to(x.dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [seq, batch, heads, head_dim] by the angles in cos/sin ([seq, 1 or batch, 1, rot]);
    dimensions past ``rot`` pass through (partial rotary)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """RoPE on queries and keys alike (rotate-half convention, as in Llama / GPT-NeoX)."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    return F.silu(gate) * up


# Elements of one temporary when the cross-entropy references walk a CPU tensor's rows in chunks.
# glibc hands buffers over 32 MB back to the OS when freed, so a whole-logits temporary (4096
# tokens x 4000 words: 65 MB) is page-faulted in anew each time: in chunks of ~4 MB, reused from
# the heap and warm in cache, the statistics took 20 ms instead of 140 ms (docs/PERFORMANCE.md).
# On CUDA the caching allocator reuses memory, and one chunk (one launch per op) is fastest.
CPU_CHUNK_ELEMENTS = 1 << 20


def row_chunks(x: torch.Tensor):
    """``x`` [..., V] as [rows, V], and the row ranges to process it in (see CPU_CHUNK_ELEMENTS)."""
    flat = x.reshape(-1, x.shape[-1])
    step = max(1, CPU_CHUNK_ELEMENTS // max(x.shape[-1], 1)) if x.device.type == "cpu" else max(flat.shape[0], 1)
    return flat, [slice(s, s + step) for s in range(0, flat.shape[0], step)]


def cross_entropy_statistics(logits: torch.Tensor, local_target: torch.Tensor):
    """Per-row statistics of one vocabulary shard, from which ranks combine the loss.

    ``logits`` [..., V_shard]; ``local_target`` holds the target's index in this shard, or
    any index outside [0, V_shard) when the target lives elsewhere. Returns fp32 (at least)
    (max, sum of exp(logit - max), target logit or 0, sum of logits), each of shape [...].
    """
    flat, chunks = row_chunks(logits)
    target = local_target.reshape(-1)
    out = torch.empty(4, flat.shape[0], dtype=compute_dtype(logits), device=logits.device)
    for rows in chunks:
        x = flat[rows].to(out.dtype)
        row_max = x.amax(dim=-1)
        out[0, rows] = row_max
        out[1, rows] = torch.sub(x, row_max.unsqueeze(-1)).exp_().sum(dim=-1)
        inside = (target[rows] >= 0) & (target[rows] < x.shape[-1])
        index = target[rows].clamp(0, x.shape[-1] - 1).unsqueeze(-1)
        out[2, rows] = x.gather(-1, index).squeeze(-1).masked_fill(~inside, 0.0)
        out[3, rows] = x.sum(dim=-1)
    return tuple(o.view(logits.shape[:-1]) for o in out)


def cross_entropy_gradient(logits: torch.Tensor, local_target: torch.Tensor, lse: torch.Tensor,
                           grad_loss: torch.Tensor, label_smoothing: float, vocab_size: int,
                           z_loss: float) -> torch.Tensor:
    """d loss / d logits of this shard, in the logits' dtype, for the loss
    (1 - ls) * (lse - x_t) + ls * (lse - mean_j x_j) + z * lse^2 of each row, where ``lse``
    is the row's log-sum-exp over the whole (all-shard) vocabulary of ``vocab_size``."""
    flat, chunks = row_chunks(logits)
    target, lse, grad_loss = (t.reshape(-1) for t in (local_target, lse, grad_loss))
    out, dt = torch.empty(flat.shape, dtype=logits.dtype, device=logits.device), compute_dtype(logits)
    for rows in chunks:
        x = flat[rows].to(dt)
        grad = out[rows] if out.dtype == dt else torch.empty_like(x)  # fp32 and up: computed in place
        torch.sub(x, lse[rows].unsqueeze(-1), out=grad).exp_()
        grad.mul_((1.0 + 2.0 * z_loss * lse[rows]).unsqueeze(-1)).sub_(label_smoothing / vocab_size)
        inside = (target[rows] >= 0) & (target[rows] < x.shape[-1])
        index = target[rows].clamp(0, x.shape[-1] - 1).unsqueeze(-1)
        grad.scatter_add_(-1, index, -(1.0 - label_smoothing) * inside.to(grad.dtype).unsqueeze(-1))
        grad.mul_(grad_loss[rows].unsqueeze(-1))
        if grad.dtype != out.dtype:
            out[rows] = grad
    return out.view(logits.shape)


def document_starts(cu_seqlens: torch.Tensor, seq: int, batch: int) -> torch.Tensor:
    """[batch, seq] int32: where the document holding each token begins within its row.
    ``cu_seqlens`` [docs + 1] are the boundaries over the batch rows laid end to end,
    flash-attn's varlen convention; every row must start a document."""
    cu = cu_seqlens.to(torch.int64)
    total = seq * batch
    row_starts = torch.arange(0, total, seq, device=cu.device)
    if cu[0] != 0 or cu[-1] != total or bool((cu[1:] <= cu[:-1]).any()) or not bool(torch.isin(row_starts, cu).all()):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to seq x batch = {total} and include every row "
                         f"start (multiples of {seq}); got {cu.tolist()}")
    doc = torch.searchsorted(cu, torch.arange(total, device=cu.device), right=True) - 1
    start = cu[doc] - row_starts.repeat_interleave(seq)
    return start.view(batch, seq).to(torch.int32)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None,
              dropout_p: float = 0.0, mask: Optional[torch.Tensor] = None,
              window: Optional[int] = None) -> torch.Tensor:
    """Causal attention over q [seq, batch, heads, dim], k/v [seq, batch, kv_heads, dim]
    (grouped-query when kv_heads < heads) -> [seq, batch, heads, dim]. ``cu_seqlens`` keeps
    attention inside documents; an explicit bool ``mask`` [batch, 1, q_len, k_len] replaces
    the causal one (decoding with a cache: the queries are the last q_len keys). A ``window``
    lets each query see only itself and the ``window`` keys before it (sliding-window attention)."""
    s, b = q.shape[:2]
    if cu_seqlens is not None:
        start = document_starts(cu_seqlens, s, b)
        keys = torch.arange(s, device=q.device)
        mask = ((keys[None, None, :] <= keys[None, :, None]) & (keys[None, None, :] >= start[:, :, None]))[:, None]
    if window is not None:
        k_len = k.shape[0]
        queries = torch.arange(k_len - s, k_len, device=q.device)[:, None]
        keys = torch.arange(k_len, device=q.device)[None, :]
        band = (keys <= queries) & (keys >= queries - window)
        mask = band if mask is None else mask & band
    qh, kh, vh = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [batch, heads, seq, dim]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=mask is None, dropout_p=dropout_p,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.permute(2, 0, 1, 3)
