"""RMSNorm and LayerNorm, computed in fp32 whatever the activation dtype."""

import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x):
        y = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return y.to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)
        self.bias = _norm_param(dim, 0.0)

    def forward(self, x):
        y = F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return {"RMSNorm": RMSNorm, "LayerNorm": LayerNorm}[kind](dim, eps)
