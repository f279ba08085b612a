"""Choosing the next tokens from logits, and stop strings: greedy by default; temperature /
top-k / top-p sampling and a repetition penalty."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: Optional[int] = None


Generators = Union[None, torch.Generator, List[torch.Generator]]


def next_tokens(logits: torch.Tensor, history: torch.Tensor, s: Sampling, gen: Generators) -> torch.Tensor:
    """[batch] token ids from ``logits`` [batch, vocab]; ``history`` [batch, length] holds each
    row's tokens so far (for the repetition penalty); ``gen``: one generator, or one per row."""
    logits = logits.float()
    if s.repetition_penalty != 1.0:  # CTRL-style: push down every token already in the row
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if s.temperature <= 0:
        return logits.argmax(-1)
    if s.temperature != 1.0:
        logits = logits / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return draw(logits.softmax(-1), gen)


def draw(probs: torch.Tensor, gen: Generators) -> torch.Tensor:
    """One token per row of ``probs`` [batch, vocab], by inverting its cumulative distribution at one
    uniform number per row: from the row's own generator when ``gen`` is a list (a row's token then
    does not depend on its batch-mates). One number per row where ``torch.multinomial`` draws one
    per vocabulary entry: the sampling cost of a decoding step falls from a third of it to little."""
    if isinstance(gen, list):
        u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in gen])
    else:
        u = torch.rand(probs.shape[0], generator=gen, device=probs.device)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    picked = torch.searchsorted(cdf, (u[:, None] * total).contiguous(), right=True).squeeze(-1)
    last = (cdf < total).sum(-1)  # the last token of non-zero probability: rounding never picks past it
    return torch.minimum(picked, last)


def hit_stop_string(text: str, stops: Sequence[str]) -> bool:
    return any(stop in text for stop in stops)


def trim_stop_string(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first stop string in it."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]
