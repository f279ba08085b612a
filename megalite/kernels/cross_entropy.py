"""Cross entropy's two passes over a vocabulary shard, as Triton kernels that stream the logits.

Each program owns one row (token) and walks its logits in chunks of BLOCK_V, in their own
dtype, keeping fp32 running statistics in registers: the fp32 ``[tokens, vocab]`` tensor
that eager cross entropy builds (and its softmax) never exists. The forward returns the
shard's per-row statistics, which ``megalite.parallel.cross_entropy`` combines across
tensor-parallel ranks into the log-sum-exp; the backward recomputes the softmax chunk by
chunk from the logits and that log-sum-exp and writes the gradient straight out in the
logits' dtype. Reference: ``reference.cross_entropy_statistics`` / ``cross_entropy_gradient``.
"""

import torch
import triton
import triton.language as tl

from megalite.kernels.launch import as_rows, warps_for

MAX_BLOCK_V = 4096


@triton.jit
def _statistics(LOGITS, TARGET, MAX, SUM_EXP, TARGET_LOGIT, SUM_LOGITS, V, stride_row, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    row_max = float("-inf")
    sum_exp = 0.0
    sum_logits = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        sum_logits += tl.sum(tl.where(mask, x, 0.0), axis=0)
        row_max = new_max
    target = tl.load(TARGET + row)
    inside = (target >= 0) & (target < V)
    target_logit = tl.load(base + tl.where(inside, target, 0), mask=inside, other=0.0).to(tl.float32)
    tl.store(MAX + row, row_max)
    tl.store(SUM_EXP + row, sum_exp)
    tl.store(TARGET_LOGIT + row, target_logit)
    tl.store(SUM_LOGITS + row, sum_logits)


@triton.jit
def _gradient(LOGITS, TARGET, LSE, GRAD_LOSS, GRAD, V, stride_row, stride_grad, smoothing, vocab_size, z_loss,
              BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    lse = tl.load(LSE + row)
    g = tl.load(GRAD_LOSS + row)
    target = tl.load(TARGET + row)
    softmax_scale = g * (1.0 + 2.0 * z_loss * lse)
    uniform = g * smoothing / vocab_size
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(LOGITS + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) * softmax_scale - uniform
        grad = tl.where(cols == target, grad - g * (1.0 - smoothing), grad)
        tl.store(GRAD + row * stride_grad + cols, grad.to(GRAD.dtype.element_ty), mask=mask)


def _block(v: int) -> int:
    return min(MAX_BLOCK_V, triton.next_power_of_2(v))


def cross_entropy_statistics(logits: torch.Tensor, local_target: torch.Tensor):
    rows = as_rows(logits)
    target = local_target.reshape(-1).contiguous()
    n, v = rows.shape
    row_max, sum_exp, target_logit, sum_logits = torch.empty(4, n, dtype=torch.float32, device=logits.device)
    block = _block(v)
    _statistics[(n,)](rows, target, row_max, sum_exp, target_logit, sum_logits, v, rows.stride(0),
                      BLOCK_V=block, num_warps=warps_for(block))
    shape = logits.shape[:-1]
    return row_max.view(shape), sum_exp.view(shape), target_logit.view(shape), sum_logits.view(shape)


def cross_entropy_gradient(logits: torch.Tensor, local_target: torch.Tensor, lse: torch.Tensor,
                           grad_loss: torch.Tensor, label_smoothing: float, vocab_size: int,
                           z_loss: float) -> torch.Tensor:
    rows = as_rows(logits)
    n, v = rows.shape
    grad = torch.empty_like(rows)
    block = _block(v)
    _gradient[(n,)](rows, local_target.reshape(-1).contiguous(), lse.reshape(-1).float().contiguous(),
                    grad_loss.reshape(-1).float().contiguous(), grad, v, rows.stride(0), grad.stride(0),
                    float(label_smoothing), float(vocab_size), float(z_loss), BLOCK_V=block,
                    num_warps=warps_for(block))
    return grad.view(logits.shape)
