"""RMSNorm and LayerNorm, computed in fp32 whatever the activation dtype.

Both take an optional ``residual``: ``norm(x, residual)`` returns (norm(x + residual),
x + residual), which the fused kernel computes in one pass. With ``zero_centered``
(Megatron's --apply-layernorm-1p) the stored weight is the scale minus 1: it starts at 0 and
weight decay pulls the scale towards 1, not 0.
"""

import torch
from torch import nn

from megalite import kernels
from megalite.config import ModelConfig
from megalite.parallel import state
from megalite.parallel.init import mark


def _norm_param(dim: int, fill: float) -> nn.Parameter:
    p = mark(nn.Parameter(torch.empty(dim)), None, fill=fill)
    p.sequence_parallel = state.get().sequence_parallel  # sees only a slice of the sequence
    return p


class _Norm(nn.Module):
    def __init__(self, dim: int, eps: float, zero_centered: bool = False):
        super().__init__()
        self.eps, self.zero_centered = eps, zero_centered
        self.weight = _norm_param(dim, 0.0 if zero_centered else 1.0)

    def scale(self) -> torch.Tensor:
        return self.weight + 1 if self.zero_centered else self.weight


class RMSNorm(_Norm):
    def forward(self, x, residual=None):
        return kernels.rms_norm(x, self.scale(), self.eps, residual)


class LayerNorm(_Norm):
    def __init__(self, dim: int, eps: float, zero_centered: bool = False):
        super().__init__(dim, eps, zero_centered)
        self.bias = _norm_param(dim, 0.0)

    def forward(self, x, residual=None):
        return kernels.layer_norm(x, self.scale(), self.bias, self.eps, residual)


def build_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    kind = {"RMSNorm": RMSNorm, "LayerNorm": LayerNorm}[cfg.normalization]
    return kind(dim, cfg.norm_epsilon, cfg.apply_layernorm_1p)
