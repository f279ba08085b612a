"""Reward models as a stage: the trainer's step on preference pairs, scored by a score head.

A micro-batch holds n pairs as 2n rows, chosen first (megalite.data.reward); the model's last stage
returns per-token scores [rows, seq] (megalite.model.heads.ScoreHead) and a row's reward is its score at
``score_index``, its last non-pad token (HF's ``...ForSequenceClassification`` semantics). The loss is
trl 1.x's RewardTrainer's: the Bradley-Terry ``-logsigmoid(chosen - rejected - margin)`` plus, with
``--center-rewards-coefficient c``, ``c * (chosen + rejected)^2``, both means over the pairs of the global
batch (the trainer hands ``begin_step`` their global count), so micro-batch and data-parallel sizes do not
change the numbers. Metrics carry trl's names: ``accuracy`` (share of pairs where chosen scores higher),
``margin`` (mean chosen - rejected), ``mean_reward`` over all rows, ``min_reward`` / ``max_reward`` over
the global batch (reduced with min / max across ranks: ``metric_ops``).
"""

import functools
import math
from typing import Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megalite.config import Config
from megalite.data.reward import RewardPairs, build_reward_pairs, collate_reward_pairs
from megalite.errors import MegaliteError
from megalite.model.heads import ScoreHead, ScoreModelWeights
from megalite.posttrain.stage import PreferenceStage

METRICS = ("accuracy", "margin", "min_reward", "mean_reward", "max_reward")


def pair_rewards(scores: torch.Tensor, mb: Dict[str, torch.Tensor]):
    """(chosen, rejected) rewards [n] of a micro-batch's per-token scores [2n, seq], in fp32."""
    rewards = scores[torch.arange(scores.shape[0], device=scores.device), mb["score_index"]].float()
    n = rewards.shape[0] // 2
    return rewards[:n], rewards[n:]


class RewardObjective:
    """``loss_fn`` of the train step for reward models; see the module docstring."""

    count_keys = ("pairs",)
    metric_ops = {"min_reward": dist.ReduceOp.MIN, "max_reward": dist.ReduceOp.MAX}

    def __init__(self, reward_cfg):
        self.center = reward_cfg.center_rewards_coefficient
        self.pairs, self.sums = 0.0, {}

    def prepare(self, batch) -> None:
        pass

    def begin_step(self, counts: Dict[str, float]) -> None:
        self.pairs = counts["pairs"]
        self.sums = {"accuracy": 0.0, "margin": 0.0, "min_reward": math.inf, "mean_reward": 0.0,
                     "max_reward": -math.inf}

    def __call__(self, scores: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
        chosen, rejected = pair_rewards(scores, mb)
        loss = -F.logsigmoid(chosen - rejected - mb["margin"]).sum() / self.pairs
        if self.center is not None:
            loss = loss + self.center * ((chosen + rejected) ** 2).sum() / self.pairs
        with torch.no_grad():
            both = torch.cat([chosen, rejected])
            s = self.sums
            s["accuracy"] += (chosen > rejected).float().sum().item() / self.pairs
            s["margin"] += (chosen - rejected).sum().item() / self.pairs
            s["mean_reward"] += both.sum().item() / (2 * self.pairs)
            s["min_reward"] = min(s["min_reward"], both.min().item())
            s["max_reward"] = max(s["max_reward"], both.max().item())
        return loss

    def metrics(self) -> Dict[str, float]:
        """This rank's share of the step's metrics (summed over ranks; min / max for ``metric_ops``)."""
        return dict(self.sums)


def score_head_fit(model):
    """What a checkpoint's weights go through before they load into the reward model ``model``
    (or a part of it): a language model's output layer left out, the score head it lacks kept
    fresh (megalite.model.heads.ScoreModelWeights); load_checkpoint's ``fit_for``."""
    current = model.state_dict()
    return lambda weights: ScoreModelWeights(weights, current)


class RewardStage(PreferenceStage):
    """``dpo_gpt.py --pref-method rm``: a reward model, the language model's output layer replaced by a
    score head (fresh when the weights are a language model's), trained on preference pairs."""

    name = "rm"
    head = ScoreHead
    build_items, dataset = build_reward_pairs, RewardPairs

    def weights_fit(self, model):
        return score_head_fit(model)

    def collate(self, cfg: Config):
        pad_to, multiple = self.padding(cfg)
        return functools.partial(collate_reward_pairs, pad_to=pad_to, multiple_of=multiple)

    def objective(self, cfg: Config, context):
        if cfg.reference.ref_load or cfg.dpo.precompute_ref_log_probs:
            raise MegaliteError("--ref-load / --precompute-ref-log-probs: a reward model (--pref-method rm) has no "
                                "reference model")
        return RewardObjective(cfg.reward)
