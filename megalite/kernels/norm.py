"""RMSNorm and LayerNorm as Triton kernels, optionally fused with the residual add before them.

One kernel pair serves both norms (RMSNorm is LayerNorm without the mean and the bias).
Forward: one program per row, statistics in fp32. Backward: each program walks a band of
rows, writes their input gradients and accumulates its band's weight (and bias) gradient
in fp32 registers; the bands' partial sums are then added in torch, so the reduction over
rows is exact in order and free of atomics. Reference: ``reference.rms_norm`` / ``layer_norm``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from megalite.kernels.launch import as_rows, row_block, warps_for


@triton.jit
def _norm_forward(X, R, SUM, Y, W, B, MEAN, RSTD, N, eps, stride_x, stride_r, stride_sum, stride_y,
                  BLOCK_N: tl.constexpr, IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        total = x + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        rounded = total.to(SUM.dtype.element_ty)  # normalise exactly what the next residual add sees
        tl.store(SUM + row * stride_sum + cols, rounded, mask=mask)
        x = rounded.to(tl.float32)
    if IS_RMS:
        centred = x
    else:
        mean = tl.sum(x, axis=0) / N
        tl.store(MEAN + row, mean)
        centred = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    y = centred * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if not IS_RMS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_backward(X, DY, DSUM, DX, W, MEAN, RSTD, DW_PARTIAL, DB_PARTIAL, M, N, rows_per_program,
                   stride_x, stride_dy, stride_dsum, stride_dx,
                   BLOCK_N: tl.constexpr, IS_RMS: tl.constexpr, HAS_DSUM: tl.constexpr):
    band = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = band.to(tl.int64) * rows_per_program  # int64 bounds make the row index int64
    last = tl.minimum(first + rows_per_program, M)
    for row in range(first, last):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        if IS_RMS:
            xhat = x * rstd
        else:
            xhat = tl.where(mask, (x - tl.load(MEAN + row)) * rstd, 0.0)
        wdy = w * dy
        dx = wdy - xhat * (tl.sum(xhat * wdy, axis=0) / N)
        if not IS_RMS:
            dx -= tl.sum(wdy, axis=0) / N
            db += dy
        dx *= rstd
        if HAS_DSUM:  # the residual sum was also used directly downstream
            dx += tl.load(DSUM + row * stride_dsum + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PARTIAL + band * N + cols, dw, mask=mask)
    if not IS_RMS:
        tl.store(DB_PARTIAL + band * N + cols, db, mask=mask)


def _bands(rows: int, device: torch.device) -> int:
    """How many programs share the backward's rows: a few per SM on a GPU."""
    programs = torch.cuda.get_device_properties(device).multi_processor_count * 4 if device.type == "cuda" else 4
    return max(1, min(rows, programs))


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, is_rms):
        shape = x.shape
        x2 = as_rows(x)
        m, n = x2.shape
        r2 = as_rows(residual) if residual is not None else x2
        total = torch.empty_like(x2) if residual is not None else x2
        y = torch.empty_like(x2)
        mean = torch.empty(m, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        block = row_block(n)
        _norm_forward[(m,)](x2, r2, total, y, weight, bias if bias is not None else weight, mean, rstd, n, eps,
                            x2.stride(0), r2.stride(0), total.stride(0), y.stride(0),
                            BLOCK_N=block, IS_RMS=is_rms, HAS_RESIDUAL=residual is not None,
                            num_warps=warps_for(block))
        ctx.save_for_backward(total, weight, bias, mean, rstd)
        ctx.is_rms, ctx.has_residual, ctx.shape = is_rms, residual is not None, shape
        if residual is None:
            return y.view(shape)
        return y.view(shape), total.view(shape)

    @staticmethod
    def backward(ctx, dy, dsum=None):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        m, n = x2.shape
        dy2 = as_rows(dy)
        dsum2 = as_rows(dsum) if dsum is not None else dy2
        dx = torch.empty_like(x2)
        bands = _bands(m, x2.device)
        dw_partial = torch.empty(bands, n, dtype=torch.float32, device=x2.device)
        db_partial = torch.empty_like(dw_partial) if not ctx.is_rms else dw_partial
        block = row_block(n)
        _norm_backward[(bands,)](x2, dy2, dsum2, dx, weight, mean, rstd, dw_partial, db_partial, m, n,
                                 triton.cdiv(m, bands), x2.stride(0), dy2.stride(0), dsum2.stride(0), dx.stride(0),
                                 BLOCK_N=block, IS_RMS=ctx.is_rms, HAS_DSUM=dsum is not None,
                                 num_warps=warps_for(block))
        dx = dx.view(ctx.shape)
        dw = dw_partial.sum(0).to(weight.dtype)
        db = db_partial.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dx if ctx.has_residual else None, dw, db, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None):
    return _Norm.apply(x, residual, weight, None, eps, True)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               residual: Optional[torch.Tensor] = None):
    return _Norm.apply(x, residual, weight, bias, eps, False)
