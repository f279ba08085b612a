"""PPO's per-token math (the RLHF recipe: InstructGPT; OpenRLHF's and trl's PPO trainers), on
[rows, seq] tensors whose ``mask`` marks the positions that predict completion tokens. Each
formula is written out in docs/rl.md; tests/test_rl_ppo.py checks them against plain Python.

Only the whitening looks beyond a row: its mean and variance are the global batch's, summed over
the data-parallel ranks (``group``), so a step does not depend on how the batch is split.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist

WHITEN_EPS = 1e-8  # trl's masked_whiten: (x - mean) * rsqrt(var + 1e-8)


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: ``-beta * kl`` at every completion token, plus the completion's score
    [rows] at its last token."""
    rewards = -beta * kl * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last masked position of each row
    scored = mask[rows, last] > 0  # a row with no completion tokens (masked out) gets no score
    rewards[rows[scored], last[scored]] += score[scored].to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation, from the last token back:
    ``delta_t = r_t + gamma V_{t+1} - V_t`` (V past the completion: 0),
    ``A_t = delta_t + gamma lam A_{t+1}``, ``returns = A + V``; zero outside the mask."""
    r, v = rewards * mask, values * mask
    advantages = torch.zeros_like(r)
    following = torch.zeros_like(r[:, 0])
    next_value = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        following = (delta + gamma * lam * following) * mask[:, t]
        advantages[:, t] = following
        next_value = v[:, t]
    return advantages, (advantages + v) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, group: Optional[object] = None) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries of the global batch (variance with
    Bessel's correction, as trl's masked_whiten), zero outside the mask."""
    sums = torch.stack([(x * mask).sum(), mask.sum()]).double()
    if group is not None:
        dist.all_reduce(sums, group=group)
    mean = sums[0] / sums[1]
    squares = (((x.double() - mean) ** 2) * mask).sum()
    if group is not None:
        dist.all_reduce(squares, group=group)
    var = squares / (sums[1] - 1)  # Bessel's correction
    return (((x.double() - mean) * torch.rsqrt(var + WHITEN_EPS)) * mask).to(x.dtype)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, tokens: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the clipped value loss summed over this micro-batch's tokens / the global batch's ``tokens``,
    the share of tokens where the clipped term was the larger):
    ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    plain, bounded = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.max(plain, bounded) * mask).sum() / tokens
    return loss, ((bounded > plain).float() * mask).sum() / tokens
