"""Load a checkpoint for inference, and batched text generation with a KV cache.

Prompts of different lengths are left-padded; a boolean mask keeps every token from
attending to padding (and to the future), and positions count from each prompt's first
real token, so a padded row decodes exactly as it would alone. Greedy by default;
temperature / top-k / top-p sampling, a repetition penalty, stop tokens and stop strings.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from megalite.config import Config
from megalite.errors import MegaliteError
from megalite.model import GPTModel
from megalite.model.kv_cache import KVCache
from megalite.parallel import state
from megalite.training.checkpointing import find_checkpoint, load_model_state, read_checkpoint


def load_model(load: str, device: torch.device = torch.device("cpu")) -> Tuple[GPTModel, Config]:
    state.initialize()
    folder = find_checkpoint(load)
    if folder is None:
        raise MegaliteError(f"--load {load}: no checkpoint found (no latest_checkpointed_iteration.txt)")
    sd = read_checkpoint(folder)
    cfg = Config.from_dict(sd["args"])
    model = GPTModel(cfg.model)
    load_model_state(model, sd, folder)
    return model.to(device).eval(), cfg


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: Optional[int] = None


def _next_tokens(logits: torch.Tensor, history: torch.Tensor, s: Sampling, gen: Optional[torch.Generator]):
    logits = logits.float()
    if s.repetition_penalty != 1.0:  # CTRL-style: push down every token already in the row
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if s.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(model: GPTModel, prompts: List[List[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
             pad_id: int = 0, use_cache: bool = True, decode: Optional[Callable] = None) -> List[List[int]]:
    """The new tokens for each prompt (each stops at a stop token/string, or max_new_tokens)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise MegaliteError("every prompt needs at least one token")
    device = next(model.parameters()).device
    b, longest = len(prompts), max(map(len, prompts))
    total = longest + max_new_tokens
    if total > model.cfg.max_position_embeddings and model.cfg.position_embedding_type == "learned_absolute":
        raise MegaliteError(f"prompt + new tokens ({total}) exceed the model's {model.cfg.max_position_embeddings} "
                            "positions")
    tokens = torch.full((b, total), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((b, total), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) : longest] = torch.tensor(p, device=device)
        valid[i, longest - len(p) : longest] = True
    gen = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.seed is not None else None
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out: List[List[int]] = [[] for _ in range(b)]
    cache, start = None, 0
    for end in range(longest, total):
        if cache is None or not use_cache:
            cache, start = _new_cache(model, b, total, device), 0
        new = slice(start, end)
        positions = (valid[:, :end].cumsum(1) - 1).clamp(min=0)[:, new]
        cache.mask = _mask(valid[:, :end], start)
        logits = model.decode_step(tokens[:, new], positions, cache)[:, -1]
        nxt = _next_tokens(logits, tokens[:, :end], sampling, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens[:, end], valid[:, end], start = nxt, ~done, end
        for i in range(b):
            if done[i]:
                continue
            out[i].append(int(nxt[i]))
            if int(nxt[i]) in sampling.stop_ids or (decode and sampling.stop_strings
                                                    and _hit_stop_string(decode(out[i]), sampling)):
                done[i] = True
        if bool(done.all()):
            break
    return out


def _new_cache(model: GPTModel, batch: int, max_len: int, device) -> KVCache:
    cfg, dtype = model.cfg, next(model.parameters()).dtype
    heads = next(iter(model.layers.values())).attention.groups
    return KVCache(model.layers.keys(), batch, max_len, heads, cfg.kv_channels, dtype, device)


def _mask(valid: torch.Tensor, start: int) -> torch.Tensor:
    """[batch, 1, new, all]: a query at position i may attend to real tokens at positions <= i.
    Padding queries attend to themselves so no row is empty (their output is never used)."""
    n = valid.shape[1]
    q = torch.arange(start, n, device=valid.device)[:, None]
    k = torch.arange(n, device=valid.device)[None, :]
    allowed = (k <= q)[None] & valid[:, None, :]
    allowed |= (k == q)[None]
    return allowed[:, None]


def _hit_stop_string(text: str, s: Sampling) -> bool:
    return any(stop in text for stop in s.stop_strings)


def trim_stop_string(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]
