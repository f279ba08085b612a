"""Keys and values kept between decoding steps, and the attention mask of the current step."""

from typing import Iterable, Optional

import torch


class KVCache:
    """Preallocated [max_len, batch, kv_heads, head_dim] buffers per layer.

    ``megalite.model.decoding.decode_step`` sets ``mask`` (bool [batch, 1, new, length + new],
    True = may attend) before each forward, layers store their new keys/values with ``update``,
    and ``advance`` follows once every stage has run.
    """

    def __init__(self, layers: Iterable[str], batch: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (max_len, batch, kv_heads, head_dim)
        self.k = {name: torch.empty(shape, dtype=dtype, device=device) for name in layers}
        self.v = {name: torch.empty(shape, dtype=dtype, device=device) for name in layers}
        self.length = 0
        self.layer: Optional[str] = None
        self.mask: Optional[torch.Tensor] = None

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Store the new keys/values of the current layer; return all of them so far."""
        end = self.length + k.shape[0]
        self.k[self.layer][self.length : end] = k
        self.v[self.layer][self.length : end] = v
        return self.k[self.layer][:end], self.v[self.layer][:end]

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens
