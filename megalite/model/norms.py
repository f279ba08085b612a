"""RMSNorm and LayerNorm, computed in fp32 whatever the activation dtype.

Both take an optional ``residual``: ``norm(x, residual)`` returns (norm(x + residual),
x + residual), which the fused kernel computes in one pass.
"""

import torch
from torch import nn

from megalite import kernels
from megalite.parallel import state
from megalite.parallel.init import mark


def _norm_param(dim: int, fill: float) -> nn.Parameter:
    p = mark(nn.Parameter(torch.empty(dim)), None, fill=fill)
    p.sequence_parallel = state.get().sequence_parallel  # sees only a slice of the sequence
    return p


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)

    def forward(self, x, residual=None):
        return kernels.rms_norm(x, self.weight, self.eps, residual)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)
        self.bias = _norm_param(dim, 0.0)

    def forward(self, x, residual=None):
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, residual)


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return {"RMSNorm": RMSNorm, "LayerNorm": LayerNorm}[kind](dim, eps)
