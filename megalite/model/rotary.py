"""Rotary position embeddings (RoPE), rotate-half convention as in Llama / GPT-NeoX.

With rotary_percent < 1 only the first part of each head's dimensions is rotated. The
rotation itself is ``megalite.kernels.rotary_qk``.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float, percent: float = 1.0):
        super().__init__()
        self.rot_dim = int(head_dim * percent)
        exponent = torch.arange(0, self.rot_dim, 2, dtype=torch.int64).float() / self.rot_dim
        self.register_buffer("inv_freq", 1.0 / (base ** exponent), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin for ``positions`` [seq] (shape [seq, 1, 1, rot_dim]) or [seq, batch]
        (shape [seq, batch, 1, rot_dim]), ready to broadcast over [seq, batch, heads, dim]."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        emb = emb[:, None, None, :] if positions.dim() == 1 else emb[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)
