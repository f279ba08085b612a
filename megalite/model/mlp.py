"""The feed-forward block: SwiGLU (Llama) or GELU (GPT-2)."""

import math

import torch.nn.functional as F
from torch import nn

from megalite import kernels
from megalite.config import ModelConfig
from megalite.parallel.layers import ColumnParallelLinear, RowParallelLinear


class MLP(nn.Module):
    """fc2(act(fc1(x))), or with SwiGLU fc2(silu(gate(x)) * fc1(x)).

    SwiGLU's gate and up projections are two layers rather than one fused [gate; up]
    matrix: each output is then contiguous, which measured faster (see
    docs/PERFORMANCE.md), and each splits over tensor-parallel ranks on its own.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, f, std = cfg.hidden_size, cfg.ffn_hidden_size, cfg.init_method_std
        self.gate = ColumnParallelLinear(h, f, bias=cfg.add_bias_linear, init_std=std) if cfg.swiglu else None
        self.fc1 = ColumnParallelLinear(h, f, bias=cfg.add_bias_linear, init_std=std)
        self.fc2 = RowParallelLinear(f, h, bias=cfg.add_bias_linear, init_std=std / math.sqrt(2.0 * cfg.num_layers))

    def forward(self, x):
        if self.gate is not None:
            return self.fc2(kernels.swiglu(self.gate(x), self.fc1(x)))
        return self.fc2(F.gelu(self.fc1(x)))
