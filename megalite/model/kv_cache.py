"""Keys and values kept between decoding steps, and the attention mask of the current step."""

from typing import Iterable, Optional, Sequence, Union

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


class SlotKVCache(KVCache):
    """A pool of ``batch`` slots whose rows advance separately: each holds one request, and a
    step runs on any subset of them (continuous batching in megalite.serve).

    ``select(rows, new)`` names the slots of the next step and how many tokens each adds (one
    count for all, or one per row: a ragged step, such as several prompts prefilled together,
    whose shorter rows are padded to the longest; padding is never stored, and a row's padding
    must fit in its slot too); ``update`` writes each row's tokens at its own length and returns
    those rows' keys/values up to the longest of them (the mask hides the rest: a view when the
    rows are neighbours, else a gathered copy); ``advance`` moves each selected row by its own
    count; ``free`` empties a slot for the next request.
    """

    def __init__(self, layers: Iterable[str], batch: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__(layers, batch, max_len, kv_heads, head_dim, dtype, device)
        for buffer in (*self.k.values(), *self.v.values()):
            buffer.zero_()  # rows read past their length must hold numbers: masked NaN still poisons 0 * v
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.end = 0

    def select(self, rows: Sequence[int], new: Union[int, Sequence[int]]) -> torch.Tensor:
        """Step the slots ``rows`` (ascending) by ``new`` tokens next (or ``new[i]`` for row i, padded
        to the largest); returns their lengths so far."""
        device = self.lengths.device
        self.rows = torch.tensor(rows, device=device)
        self.span = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else None
        before = self.lengths[self.rows]
        ragged = not isinstance(new, int)
        width = max(new) if ragged else new
        self.counts = torch.tensor(new, device=device) if ragged else new
        self.end = int(before.max()) + width
        steps = torch.arange(width, device=device)[:, None]
        self.at = before[None, :] + steps  # [width, rows]: where each goes
        self.at_rows = self.rows[None, :].expand_as(self.at)
        self.real = None  # [width, rows]: which tokens are not padding (None: all)
        if ragged and min(new) < width:
            self.real = steps < self.counts[None, :]
            self.at, self.at_rows = self.at[self.real], self.at_rows[self.real]
        return before

    def update(self, k: torch.Tensor, v: torch.Tensor):
        keys, values = self.k[self.layer], self.v[self.layer]
        if self.real is not None:
            k, v = k[self.real], v[self.real]
        keys[self.at, self.at_rows] = k
        values[self.at, self.at_rows] = v
        if self.span is not None:
            return keys[: self.end, self.span], values[: self.end, self.span]
        return keys[: self.end, self.rows], values[: self.end, self.rows]

    def advance(self, new_tokens: int) -> None:
        self.lengths[self.rows] += self.counts

    def free(self, row: int) -> None:
        self.lengths[row] = 0
