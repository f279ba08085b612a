"""Batched text generation with a KV cache, on the public decoding API (megalite.model.decoding).

Prompts of different lengths are left-padded and decode exactly as they would alone; each row
stops at a stop token or stop string (megalite.eval.sampling), or after ``max_new_tokens``.
A model loaded across T x P ranks (megalite.eval.loading) generates with every rank in the same
loop: the last stage chooses the next tokens and shares them with every rank.
"""

from typing import Callable, List, Optional

import torch

from megalite.errors import MegaliteError
from megalite.eval.sampling import Sampling, hit_stop_string, next_tokens
from megalite.model.decoding import attention_mask, decode_step, new_cache, share_tokens, token_positions
from megalite.parallel.pipeline import model_chunks


@torch.no_grad()
def generate(model, prompts: List[List[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
             pad_id: int = 0, use_cache: bool = True, decode: Optional[Callable] = None,
             row_seeds: Optional[List[int]] = None) -> List[List[int]]:
    """The new tokens for each prompt (each stops at a stop token/string, or max_new_tokens).
    ``row_seeds``: each row samples from its own generator (what a row draws then does not depend
    on which rows share its batch), instead of one generator seeded by ``sampling.seed``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise MegaliteError("every prompt needs at least one token")
    device, cfg = next(model.parameters()).device, model_chunks(model)[0].cfg
    b, longest = len(prompts), max(map(len, prompts))
    total = longest + max_new_tokens
    if total > cfg.max_position_embeddings and cfg.position_embedding_type == "learned_absolute":
        raise MegaliteError(f"prompt + new tokens ({total}) exceed the model's {cfg.max_position_embeddings} "
                            "positions")
    tokens = torch.full((b, total), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((b, total), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) : longest] = torch.tensor(p, device=device)
        valid[i, longest - len(p) : longest] = True
    gen = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.seed is not None else None
    rows = [torch.Generator(device=device).manual_seed(r) for r in row_seeds] if row_seeds is not None else None
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out: List[List[int]] = [[] for _ in range(b)]
    cache, start = None, 0
    for end in range(longest, total):
        if cache is None or not use_cache:
            cache, start = new_cache(model, b, total, device), 0
        logits = (_first_step(model, tokens, valid, end, cache, total) if start == 0
                  else _step(model, tokens, valid, start, end, cache))
        if logits is None:
            nxt = None
        else:
            nxt = next_tokens(logits, tokens[:, :end], sampling, gen if rows is None else rows)
        nxt = share_tokens(nxt, b, device)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens[:, end], valid[:, end], start = nxt, ~done, end
        finished = []
        for i, (token, over) in enumerate(zip(nxt.tolist(), done.tolist())):  # one read of each, not 2 x b
            if over:
                continue
            out[i].append(token)
            if token in sampling.stop_ids or (decode and sampling.stop_strings
                                              and hit_stop_string(decode(out[i]), sampling.stop_strings)):
                finished.append(i)
        done[finished] = True
        if bool(done.all()):
            break
    return out


def _step(model, tokens, valid, start: int, end: int, cache):
    """The logits after the tokens at [start, end) of every row (None off the last pipeline stage)."""
    positions = token_positions(valid[:, :end])[:, start:end]
    return decode_step(model, tokens[:, start:end], positions, cache, attention_mask(valid[:, :end], start))


def _first_step(model, tokens, valid, end: int, cache, total: int):
    """``_step`` from an empty cache with each distinct row computed once (the G copies of a prompt
    that online RL samples), its keys and values then copied to every row that holds it."""
    rows = torch.cat([tokens[:, :end], valid[:, :end].long()], 1)
    distinct, index = torch.unique(rows, dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return _step(model, tokens, valid, 0, end, cache)
    one = torch.empty(distinct.shape[0], dtype=torch.long, device=tokens.device)
    one.scatter_(0, index, torch.arange(rows.shape[0], device=tokens.device))  # a row holding each
    small = new_cache(model, distinct.shape[0], total, tokens.device)
    logits = _step(model, tokens[one], valid[one], 0, end, small)
    for name in small.k:
        cache.k[name][:end] = small.k[name][:end, index]
        cache.v[name][:end] = small.v[name][:end, index]
    cache.advance(small.length)
    return None if logits is None else logits[index]

