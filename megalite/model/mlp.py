"""The feed-forward block: SwiGLU (Llama) or GELU (GPT-2)."""

import math

import torch.nn.functional as F
from torch import nn

from megalite.config import ModelConfig
from megalite.parallel.layers import ColumnParallelLinear, RowParallelLinear


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.swiglu
        width = cfg.ffn_hidden_size
        # SwiGLU's fc1 stacks [gate; up]: stride 2 keeps both halves together on every TP rank.
        self.fc1 = ColumnParallelLinear(cfg.hidden_size, 2 * width if self.swiglu else width,
                                        bias=cfg.add_bias_linear, init_std=cfg.init_method_std,
                                        stride=2 if self.swiglu else 1)
        self.fc2 = RowParallelLinear(width, cfg.hidden_size, bias=cfg.add_bias_linear,
                                     init_std=cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers))

    def forward(self, x):
        h = self.fc1(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.fc2(h)
