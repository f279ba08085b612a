"""Load a checkpoint for inference, and batched text generation with a KV cache.

Prompts of different lengths are left-padded; a boolean mask keeps every token from
attending to padding (and to the future), and positions count from each prompt's first
real token, so a padded row decodes exactly as it would alone. Greedy by default;
temperature / top-k / top-p sampling, a repetition penalty, stop tokens and stop strings.

A checkpoint saved with tensor / pipeline parallelism decodes either in one process (its
shards gathered on load) or across T x P ranks under torchrun, each rank holding its shard
and stage: every decoding step passes the new tokens' hidden states from stage to stage
(virtual stages in their pipeline order), and the last stage's choice of next tokens is
shared with every rank so all of them follow the same loop.
"""

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megalite.checkpoint.layout import find_checkpoint, read_checkpoint, saved_settings
from megalite.checkpoint.load import load_model_state
from megalite.checkpoint.reshard import load_full_state
from megalite.config import Config
from megalite.errors import MegaliteError
from megalite.model import GPTModel
from megalite.model.gpt import build_stage_model
from megalite.model.kv_cache import KVCache
from megalite.parallel import state
from megalite.parallel.pipeline import model_chunks
from megalite.posttrain.lora_io import load_lora_weights
from megalite.training.trainer import setup_distributed


def load_model(load: str, device: Optional[torch.device] = None) -> Tuple[torch.nn.Module, Config]:
    """The model a checkpoint holds, for inference. In one process the whole model (tensor- and
    pipeline-parallel files gathered); under torchrun with T x P ranks (the checkpoint's own
    layout) this rank's shard of its pipeline stage."""
    folder = find_checkpoint(load)
    if folder is None:
        raise MegaliteError(f"--load {load}: no checkpoint found (no latest_checkpointed_iteration.txt)")
    cfg = Config.from_dict(saved_settings(folder))
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        full, _ = load_full_state(folder)
        p.tensor_model_parallel_size = p.pipeline_model_parallel_size = 1
        p.num_layers_per_virtual_pipeline_stage = None
        state.initialize()
        model = GPTModel(cfg.model)
        if cfg.lora.lora_rank:  # a LoRA run's checkpoint: its base, and its adapters unmerged
            load_lora_weights(model, cfg, full, folder)
        else:
            load_model_state(model, {"model": dict(full)}, folder)
    elif cfg.lora.lora_rank:
        raise MegaliteError(f"{folder} holds LoRA adapters: decode it in one process, or export it merged with "
                            "tools/convert_checkpoint.py --to-hf and convert that back with --from-hf")
    elif world == tp * pp:
        default = setup_distributed(p.distributed_backend)
        device = device or default
        state.initialize(tp, pp)
        model = build_stage_model(cfg, None)
        load_model_state(model, read_checkpoint(folder), folder)
    else:
        raise MegaliteError(f"{folder} was saved with tensor-parallel size {tp} and pipeline-parallel size {pp}: "
                            f"generate in one process or on {tp * pp} (torchrun --nproc-per-node {tp * pp}), "
                            f"not {world}")
    return model.to(device or torch.device("cpu")).eval(), cfg


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
def generate(model, prompts: List[List[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
             pad_id: int = 0, use_cache: bool = True, decode: Optional[Callable] = None) -> List[List[int]]:
    """The new tokens for each prompt (each stops at a stop token/string, or max_new_tokens)."""
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
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out: List[List[int]] = [[] for _ in range(b)]
    cache, start = None, 0
    for end in range(longest, total):
        if cache is None or not use_cache:
            cache, start = _new_cache(model, b, total, device), 0
        new = slice(start, end)
        positions = (valid[:, :end].cumsum(1) - 1).clamp(min=0)[:, new]
        cache.mask = _mask(valid[:, :end], start)
        logits = _decode_step(model, tokens[:, new], positions, cache)
        nxt = _next_tokens(logits, tokens[:, :end], sampling, gen) if logits is not None else None
        nxt = _shared(nxt, b, device)
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


def _decode_step(model, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                 every_position: bool = False) -> Optional[torch.Tensor]:
    """This rank's share of one decoding step: the last position's logits [batch, vocab] (with
    ``every_position``, all of them: [batch, new, vocab]) on the last pipeline stage, None
    elsewhere. Each model chunk (virtual stage) takes the previous virtual stage's hidden
    states and hands its own to the next, which lives on the next rank."""
    s = state.get()
    x = None
    for chunk in model_chunks(model):
        if not chunk.pre_process:
            x = torch.empty(tokens.shape[1], tokens.shape[0], chunk.cfg.hidden_size, dtype=_dtype(model),
                            device=tokens.device)
            dist.recv(x, src=s.pp_ranks[(s.pp_rank - 1) % s.pp_size])
        x = chunk.decode_step(tokens, positions, cache, hidden=x)
        if not chunk.post_process:
            dist.send(x.contiguous(), dst=s.pp_ranks[(s.pp_rank + 1) % s.pp_size])
            x = None
    cache.advance(tokens.shape[1])
    if x is None:
        return None
    return x if every_position else x[:, -1]


def _shared(nxt: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
    """The next tokens as chosen by the last stage's first tensor-parallel rank, on every rank."""
    s = state.get()
    if s.world_size == 1:
        return nxt
    mine = nxt if nxt is not None and s.tp_rank == 0 else torch.zeros(batch, dtype=torch.long, device=device)
    dist.all_reduce(mine)  # exactly one rank contributes
    return mine


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _new_cache(model, batch: int, max_len: int, device) -> KVCache:
    chunks = model_chunks(model)
    layers = [name for chunk in chunks for name in chunk.layers.keys()]
    heads = next(iter(chunks[0].layers.values())).attention.groups
    return KVCache(layers, batch, max_len, heads, chunks[0].cfg.kv_channels, _dtype(model), device)


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
