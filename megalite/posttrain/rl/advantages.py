"""Advantages from the rewards of a whole global batch (every rank computes the same ones), and
the reward metrics under trl's names. Formulas: docs/rl.md.

``rewards`` is [completions, reward functions] in global sample order, the G completions of a
prompt consecutive; NaN where a function returned None. A completion every function left
unscored gets advantage 0 and is left out of its group's baseline, as in trl.
"""

from typing import Dict, List, Optional, Tuple

import torch

EPS = 1e-4  # trl's: advantages / (std + 1e-4)


def nanstd(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (NaN for fewer than two values)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = var * torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    out = var.sqrt()
    return out if keepdim else (out.reshape(()) if dim is None else out.squeeze(dim))


def weighted(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each completion's weighted reward sum (NaN where every function left it unscored)."""
    total = (rewards * weights[None]).nansum(1)
    total[torch.isnan(rewards).all(1)] = float("nan")
    return total


def grpo(rewards: torch.Tensor, weights: torch.Tensor, g: int, scale: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(advantages [N], whether each completion's group (or batch) reward std is zero [N]):
    reward minus its group's mean, divided by the group's std (``group``), the batch's (``batch``)
    or nothing (``none``)."""
    r = weighted(rewards, weights)
    mean = torch.nanmean(r.view(-1, g), 1).repeat_interleave(g)
    if scale == "batch":
        std = (nanstd(r) if r.numel() > 1 else torch.zeros(())).expand_as(r)
    else:
        std = nanstd(r.view(-1, g), 1).repeat_interleave(g) if g > 1 else torch.zeros_like(r)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + EPS)
    return torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std))


def rloo(rewards: torch.Tensor, weights: torch.Tensor, g: int, normalize: bool,
         kl: torch.Tensor = None, beta: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(advantages [N], group std is zero [N]): reward (less ``beta`` times the completion's summed
    KL to the reference) minus the mean of the other scored completions of its group; optionally
    whitened over the batch."""
    r = weighted(rewards, weights)
    if beta:
        r = r - beta * kl
    grouped = r.view(-1, g)
    std = nanstd(grouped, 1) if g > 1 else torch.zeros(grouped.shape[0])
    scored = (~torch.isnan(grouped)).sum(1, keepdim=True)
    baseline = (torch.nansum(grouped, 1, keepdim=True) - grouped) / (scored - 1)
    adv = (grouped - baseline).view(-1) if g > 1 else torch.zeros_like(r)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (nanstd(adv) + EPS)
    return torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std)).repeat_interleave(g)


def reward_metrics(rewards: torch.Tensor, weights: torch.Tensor, names: List[str],
                   zero_std: Optional[torch.Tensor]) -> Dict[str, float]:
    """trl's reward metrics of a rollout batch (``frac_reward_zero_std`` only for group methods)."""
    out = {}
    for i, name in enumerate(names):
        out[f"rewards/{name}/mean"] = torch.nanmean(rewards[:, i]).item()
        out[f"rewards/{name}/std"] = nanstd(rewards[:, i]).item()
    r = weighted(rewards, weights)
    out["reward"] = torch.nanmean(r).item()
    out["reward_std"] = nanstd(r).item()
    if zero_std is not None:
        out["frac_reward_zero_std"] = zero_std.float().mean().item()
    return out


def length_metrics(lengths: torch.Tensor, truncated: torch.Tensor) -> Dict[str, float]:
    """trl's completion-length metrics from every completion's length and whether it was cut."""
    lengths = lengths.float()
    done = lengths[~truncated] if (~truncated).any() else torch.zeros(1)
    return {"completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": truncated.float().mean().item(),
            "completions/mean_terminated_length": done.mean().item(),
            "completions/min_terminated_length": done.min().item(),
            "completions/max_terminated_length": done.max().item()}
