"""The public decoding API: incremental forward steps of a (possibly pipelined) model over a KV
cache, shared by generation, scoring, a server's continuous batching and online RL.

Batch-first and free of sampling policy: a step returns logits and the caller picks tokens.
Rows of different lengths share a batch through a boolean ``valid`` [batch, length] (True = a
real token): ``attention_mask`` keeps every token from attending to padding and to the future,
and ``token_positions`` counts positions from each row's first real token, so a padded row
decodes exactly as it would alone.

Under tensor / pipeline parallelism every rank of one model calls ``decode_step`` with the same
arguments: each model chunk (virtual stage, in pipeline order) takes the previous virtual
stage's hidden states and hands its own to the next, which lives on the next rank; the last
stage returns the logits, and ``share_tokens`` gives every rank the tokens chosen from them.
"""

from typing import Optional

import torch
import torch.distributed as dist

from megalite.model.kv_cache import KVCache, SlotKVCache
from megalite.parallel import state
from megalite.parallel.pipeline import model_chunks


def new_cache(model, batch: int, max_len: int, device: torch.device, kind=KVCache) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens, for the layers this rank holds
    (``kind=SlotKVCache``: a pool of slots that advance separately)."""
    chunks = model_chunks(model)
    layers = [name for chunk in chunks for name in chunk.layers.keys()]
    heads = next(iter(chunks[0].layers.values())).attention.groups
    return kind(layers, batch, max_len, heads, chunks[0].cfg.kv_channels, _dtype(model), device)


def attention_mask(valid: torch.Tensor, start: int = 0) -> torch.Tensor:
    """[batch, 1, new, all] for the queries at positions ``start`` .. ``valid.shape[1] - 1``: a
    query at position i may attend to real tokens at positions <= i. Padding queries attend to
    themselves so no row is empty (their output is never used)."""
    n = valid.shape[1]
    q = torch.arange(start, n, device=valid.device)[:, None]
    k = torch.arange(n, device=valid.device)[None, :]
    allowed = (k <= q)[None] & valid[:, None, :]
    allowed |= (k == q)[None]
    return allowed[:, None]


def slot_mask(cache: SlotKVCache, before: torch.Tensor, new: int) -> torch.Tensor:
    """[rows, 1, new, cache.end] for a step of ``new`` tokens on slots holding ``before`` tokens
    each (SlotKVCache.select): a query attends to its slot's tokens up to its own position."""
    q = before[:, None] + torch.arange(new, device=before.device)[None, :]
    k = torch.arange(cache.end, device=before.device)
    return (k[None, None, :] <= q[:, :, None])[:, None]


def token_positions(valid: torch.Tensor) -> torch.Tensor:
    """[batch, length]: each token's position counted from its row's first real token (left
    padding gets 0)."""
    return (valid.cumsum(1) - 1).clamp(min=0)


def decode_step(model, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, mask: torch.Tensor,
                every_position: bool = False, last: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Run ``tokens`` [batch, new] at ``positions`` [batch, new] under ``mask`` (attention_mask)
    against what ``cache`` holds, and add them to it. Returns this rank's share: on the last
    pipeline stage the full-vocabulary logits of the last position [batch, vocab] (with
    ``last`` [batch], of each row's position ``last``; with ``every_position``, of all of them:
    [batch, new, vocab]), None on the other stages."""
    s = state.get()
    cache.mask = mask
    if not every_position and last is None:
        last = torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
    x = None
    for chunk in model_chunks(model):
        if not chunk.pre_process:
            x = torch.empty(tokens.shape[1], tokens.shape[0], chunk.cfg.hidden_size, dtype=_dtype(model),
                            device=tokens.device)
            dist.recv(x, src=s.pp_ranks[(s.pp_rank - 1) % s.pp_size])
        x = chunk.decode_step(tokens, positions, cache, hidden=x, at=None if every_position else last)
        if not chunk.post_process:
            dist.send(x.contiguous(), dst=s.pp_ranks[(s.pp_rank + 1) % s.pp_size])
            x = None
    cache.advance(tokens.shape[1])
    if x is None:
        return None
    return x if every_position else x[:, 0]


def share_tokens(tokens: Optional[torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
    """The [batch] token ids chosen on the last stage's first tensor-parallel rank, on every rank
    (the other ranks pass None or their own copy), so all of them feed the same next step."""
    s = state.get()
    group = s.model_parallel_group  # one model replica: its data-parallel peers decode other rows
    if group is None or dist.get_world_size(group) == 1:
        return tokens
    mine = tokens if tokens is not None and s.tp_rank == 0 else torch.zeros(batch, dtype=torch.long, device=device)
    dist.all_reduce(mine, group=group)  # exactly one rank of the replica contributes
    return mine


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype
