"""GRPO, RLOO and PPO as a train-step objective: ``prepare`` turns the step's prompt samples into
rollout rows (generation, rewards, advantages, old and reference log-probs; PPO's values and GAE)
and, for PPO, takes the critic's step; ``__call__`` is the policy loss of one micro-batch.
Formulas (trl 1.16's GRPOTrainer and RLOOTrainer; PPO's from the RLHF recipe): docs/rl.md.

Every loss is normalised over the global batch (the trainer hands ``begin_step`` the global
counts of completion tokens and completions), so it does not depend on the micro-batch or
data-parallel split; with one micro-batch per step it is trl's number. With --num-iterations K a
rollout batch is generated once and trained on for K steps against the log-probs the policy
gave it when it was generated ("old" log-probs), as trl does.
"""

from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from megalite.model.shared_prefix import SharedPrefix, common_prefixes, group_leaders
from megalite.parallel import state
from megalite.parallel.data_parallel import all_reduce_scalar
from megalite.posttrain.rl import advantages as adv
from megalite.posttrain.rl import ppo
from megalite.posttrain.rl.prompts import Prompt
from megalite.posttrain.rl.rollout import row_seeds, training_rows
from megalite.training.data import row_padding

MAX, MIN = dist.ReduceOp.MAX, dist.ReduceOp.MIN


def token_logps(per_token: torch.Tensor, mb) -> torch.Tensor:
    """Per-token log-probs [rows, seq] from the model's [rows, seq, 2] losses and entropies."""
    return -per_token[..., 0] * mb["loss_mask"]


class PolicyGradient:
    """``loss_fn`` of the train step for GRPO, RLOO and PPO (``--algorithm``); see the module docstring.
    ``critic``: PPO's (megalite.posttrain.rl.critic.Critic)."""

    count_keys = ("sequences", "loss_mask")  # held-out metrics are means over completions

    def __init__(self, cfg, ctx, rewards, prompts: Dict[bool, List[Prompt]], tokenizer, sample: Callable,
                 reference: Optional[Callable], old: Callable, critic=None):
        self.rl, self.cfg, self.model = cfg.rl, cfg, ctx.model
        self.rewards, self.prompts, self.tokenizer = rewards, prompts, tokenizer
        self.sample, self.reference, self.old, self.critic = sample, reference, old, critic
        self.grpo, self.ppo = cfg.rl.algorithm == "grpo", cfg.rl.algorithm == "ppo"
        self.loss_type = "bnpo" if self.ppo else cfg.rl.loss_type  # PPO: the mean over the batch's tokens
        self.lr = ctx.lr
        self.critic_metrics: Dict[str, float] = {}
        self.eps_low = cfg.rl.epsilon
        self.eps_high = cfg.rl.epsilon_high if cfg.rl.epsilon_high is not None else cfg.rl.epsilon
        self.gbs, self.g, self.k = cfg.training.global_batch_size, cfg.rl.num_generations, cfg.rl.num_iterations
        self.pad = tokenizer.pad if tokenizer.pad is not None else tokenizer.eod
        self.cache = None  # (rollout index, the rows of its micro-batches)
        self.rollout_metrics: Dict[str, float] = {}
        self.metric_ops: Dict[str, object] = {}

    # -- rollouts --------------------------------------------------------------------------------
    def prepare(self, batch: List[Dict[str, torch.Tensor]]) -> None:
        held_out = bool(batch[0]["held_out"][0])
        first = int(batch[0]["sample"].min())
        rollout = first // self.gbs // self.k
        if not held_out and self.cache is not None and self.cache[0] == rollout:  # a reused rollout batch
            for mb, rows in zip(batch, self.cache[1]):
                mb.update(rows)
            self.rollout_metrics = {}
        else:
            self._generate(batch, held_out, rollout)
            if not held_out:
                self.cache = (rollout, [{k: v for k, v in mb.items()
                                         if k not in ("prompt_index", "sample", "held_out")} for mb in batch])
        self.critic_metrics = {}
        if self.critic is not None and not held_out:  # the critic's step on the values' rollout targets
            tokens = all_reduce_scalar(float(sum(mb["loss_mask"].sum().item() for mb in batch)), state.get().dp_group)
            self.critic_metrics = self.critic.train_step(batch, self.lr(), max(tokens, 1.0))

    def _generate(self, batch, held_out: bool, rollout: int) -> None:
        t = self.cfg.training
        device = batch[0]["prompt_index"].device
        pool = self.prompts[held_out]
        mine = [pool[int(i)] for mb in batch for i in mb["prompt_index"]]
        samples = torch.cat([mb["sample"] for mb in batch])
        ids = [p.ids for p in mine]
        seeds = row_seeds(t.seed + (1 if held_out else 0), samples.tolist())  # held-out: the same each time
        completions = self.sample(self.model, ids, seeds)
        rows = training_rows(ids, completions, self.cfg.data.seq_length, self.pad, *row_padding(self.cfg))
        stops = {self.tokenizer.eod, self.pad}
        truncated = torch.tensor([len(c) == 0 or c[-1] not in stops for c in completions])
        if self.rl.mask_truncated_completions:
            rows["loss_mask"][truncated] = 0.0
        n = 0
        share = self.g > 1 and shares_prompts(self.cfg)
        for mb in batch:
            m = mb["prompt_index"].numel()
            mb.update({k: v[n:n + m].to(device) for k, v in rows.items()})
            mb["sequences"] = torch.ones(m, device=device)
            if share:
                mb["shared_prefix"] = shared_prompts(mb["prompt_index"], mb["tokens"])
            n += m
        if self.old is not None and (not self.grpo or self.k > 1):  # the policy's log-probs as it generated
            self.old(batch)
        if self.reference is not None:
            self.reference(batch)
        if self.critic is not None:
            self.critic.values(batch)
        scores = self._my_rewards(mine, completions, device)
        lengths = torch.tensor([float(len(c)) for c in completions])
        kl = self._sequence_kl(batch) if self.rl.algorithm == "rloo" and self.rl.beta else torch.zeros(len(mine))
        positions = samples.cpu() % self.gbs  # each row's place in the global batch
        table = _gather_rows(torch.cat([scores, lengths[:, None], truncated[:, None].float(), kl[:, None]], 1),
                             positions, self.gbs, device)
        nf = scores.shape[1]
        rewards, lengths_all, trunc_all, kl_all = table[:, :nf], table[:, nf], table[:, nf + 1].bool(), table[:, nf + 2]
        w = self.rewards.weights
        if self.ppo:
            ppo_metrics, zero_std = self._ppo_advantages(batch, adv.weighted(scores, w), device), None
        else:
            if self.grpo:
                a, zero_std = adv.grpo(rewards, w, self.g, self.rl.scale_rewards)
            else:
                a, zero_std = adv.rloo(rewards, w, self.g, self.rl.normalize_advantages, kl_all, self.rl.beta)
            n = 0
            for mb in batch:
                m = mb["prompt_index"].numel()
                mb["advantages"] = a[positions[n:n + m]].to(device)
                n += m
        metrics = adv.reward_metrics(rewards, w, self.rewards.names, zero_std)
        metrics.update(adv.length_metrics(lengths_all, trunc_all))
        if self.ppo:
            metrics.update(ppo_metrics)
        elif not self.grpo and self.rl.beta:
            metrics["kl"] = self._rloo_kl(batch, device)
        self.rollout_metrics = metrics

    def _ppo_advantages(self, batch, scores: torch.Tensor, device) -> Dict[str, float]:
        """PPO: each micro-batch's whitened GAE advantages and returns [rows, seq] from the per-token
        rewards (the KL to the reference, the score at the last token) and the critic's values, on the
        last pipeline stage (where the log-probs and values are); trl's ``objective/`` metrics."""
        rl, s = self.rl, state.get()
        scores = torch.nan_to_num(scores, nan=0.0)
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed KL, summed non-score reward
        n, mine = 0, []
        for mb in batch:
            m = mb["prompt_index"].numel()
            score, n = scores[n:n + m].to(device), n + m
            if "values" not in mb:  # not the last pipeline stage
                continue
            mask = mb["loss_mask"]
            kl = (mb["old_logps"] - mb["ref_logps"]) * mask if rl.beta else torch.zeros_like(mask)
            rewards = ppo.token_rewards(score, kl, mask, rl.beta)
            mb["advantages"], mb["returns"] = ppo.gae(rewards, mb["values"], mask, rl.gamma, rl.lam)
            sums += torch.stack([kl.sum(), (-rl.beta * kl).sum()]).double()
            mine.append(mb)
        if mine:
            whitened = ppo.whiten(torch.cat([mb["advantages"].flatten() for mb in mine]),
                                  torch.cat([mb["loss_mask"].flatten() for mb in mine]), s.dp_group)
            for mb, a in zip(mine, whitened.split([mb["loss_mask"].numel() for mb in mine])):
                mb["advantages"] = a.view_as(mb["loss_mask"])
        for group in (s.pp_group, s.dp_group):
            if group is not None:
                dist.all_reduce(sums, group=group)
        total = all_reduce_scalar(float(scores.sum()), s.dp_group)
        kl, non_score = (sums / self.gbs).tolist()
        return {"objective/kl": kl, "objective/non_score_reward": non_score,
                "objective/rlhf_reward": total / self.gbs + non_score}

    def _my_rewards(self, mine: List[Prompt], completions: List[List[int]], device) -> torch.Tensor:
        """[rows, reward functions], computed on the first rank of this model replica and shared
        with its other tensor / pipeline ranks (a reward function need not be deterministic)."""
        s = state.get()
        n, f = len(mine), len(self.rewards.names)
        if s.tp_rank == 0 and s.pp_rank == 0:
            texts = [self.tokenizer.decode([t for t in c if t not in self.tokenizer.special_ids]) for c in completions]
            conversational = not isinstance(mine[0].prompt, str)
            shown = [[{"role": "assistant", "content": x}] for x in texts] if conversational else texts
            columns = {k: [p.columns.get(k) for p in mine] for k in sorted({k for p in mine for k in p.columns})}
            scores = self.rewards([p.prompt for p in mine], shown, [list(c) for c in completions], columns)
            scores = scores.float().cpu()
        else:
            scores = torch.zeros(n, f)
        if s.model_parallel_group is not None and dist.get_world_size(s.model_parallel_group) > 1:
            scores = _share_from_first(scores.to(device), s.model_parallel_group).cpu()
        return scores

    def _sequence_kl(self, batch) -> torch.Tensor:
        """RLOO: each row's summed KL estimate old - ref over its completion, on every pipeline stage."""
        s = state.get()
        out = torch.cat([((mb["old_logps"] - mb["ref_logps"]) * mb["loss_mask"]).sum(1) if "old_logps" in mb
                         else torch.zeros(mb["prompt_index"].numel(), device=mb["loss_mask"].device)
                         for mb in batch]).float().cpu()
        if s.pp_group is not None and s.pp_size > 1:
            out = out.to(batch[0]["loss_mask"].device)
            dist.all_reduce(out, group=s.pp_group)
            out = out.cpu()
        return out

    def _rloo_kl(self, batch, device) -> float:
        s = state.get()
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for mb in batch:
            if "old_logps" in mb:
                sums[0] += float(((mb["old_logps"] - mb["ref_logps"]) * mb["loss_mask"]).sum())
                sums[1] += float(mb["loss_mask"].sum())
        for group in (s.pp_group, s.dp_group):
            if group is not None:
                dist.all_reduce(sums, group=group)
        return float(sums[0] / sums[1].clamp(min=1.0))

    # -- the loss --------------------------------------------------------------------------------
    def begin_step(self, counts: Dict[str, float]) -> None:
        self.counts = counts
        self.sums = {"entropy": 0.0}
        if self.loss_type == "cispo":
            self.sums["cispo_clip_ratio"] = 0.0
        else:
            self.sums.update({"clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0, "clip_ratio/region_mean": 0.0,
                              "clip_ratio/low_min": float("inf"), "clip_ratio/high_max": float("-inf")})
        if self.grpo and self.rl.beta:
            self.sums["kl"] = 0.0
        if self.ppo:
            self.sums["policy/approxkl_avg"] = 0.0
            self.sums.update(self.critic_metrics)
        self.metric_ops = {k: MAX for k in self.rollout_metrics}
        self.metric_ops.update({"clip_ratio/low_min": MIN, "clip_ratio/high_max": MAX})

    def __call__(self, per_token: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
        mask = mb["loss_mask"]
        logp = -per_token[..., 0]
        a = mb["advantages"].float()
        tokens, sequences = max(self.counts["loss_mask"], 1.0), self.counts["sequences"]
        if self.grpo or self.ppo:
            loss, stats = self._clipped(logp, mask, a, mb, tokens, sequences)
        else:
            loss, stats = self._rloo(logp, mask, a, mb, sequences)
        with torch.no_grad():
            self.sums["entropy"] += float((per_token[..., 1] * mask).sum()) / tokens
            for k, v in stats.items():
                if k.endswith("_min"):
                    self.sums[k] = min(self.sums[k], v)
                elif k.endswith("_max"):
                    self.sums[k] = max(self.sums[k], v)
                else:
                    self.sums[k] += v
        return loss

    def _clipped(self, logp, mask, a, mb, tokens: float, sequences: float):
        """GRPO's per-token clipped loss (advantages per completion), and PPO's (per token)."""
        rl = self.rl
        old = mb["old_logps"] if "old_logps" in mb else logp.detach()
        coef_1 = torch.exp(logp - old)
        a = a[:, None] if a.dim() == 1 else a
        if self.loss_type == "cispo":
            per_token = -torch.clamp(coef_1, max=self.eps_high).detach() * a * logp
        else:
            per_token = clipped_surrogate(coef_1, a, self.eps_low, self.eps_high)
        stats = {}
        if self.ppo:  # its KL is in the rewards
            stats["policy/approxkl_avg"] = float((0.5 * (logp - old).detach() ** 2 * mask).sum()) / tokens
        elif rl.beta:
            d = mb["ref_logps"] - logp
            kl = torch.exp(d) - d - 1
            if rl.kl_bias_correction:  # trl's default: the unbiased reverse-KL gradient
                kl = kl * coef_1
            per_token = per_token + rl.beta * kl
            stats["kl"] = float((kl.detach() * mask).sum()) / tokens
        if self.loss_type == "grpo":
            loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / sequences
        elif self.loss_type == "dr_grpo":
            loss = (per_token * mask).sum() / (sequences * rl.max_completion_length)
        else:  # bnpo, dapo, cispo: the mean over the global batch's completion tokens
            loss = (per_token * mask).sum() / tokens
        if self.loss_type != "cispo":
            low = ((coef_1 < 1 - self.eps_low) & (a < 0)).float()
            high = ((coef_1 > 1 + self.eps_high) & (a > 0)).float()
            per_seq = mask.sum(-1)
            stats.update({"clip_ratio/low_mean": float((low * mask).sum()) / tokens,
                          "clip_ratio/high_mean": float((high * mask).sum()) / tokens,
                          "clip_ratio/region_mean": float(((low + high).clamp(max=1) * mask).sum()) / tokens,
                          "clip_ratio/low_min": float(((low * mask).sum(-1) / per_seq).min()),
                          "clip_ratio/high_max": float(((high * mask).sum(-1) / per_seq).max())})
        else:
            stats["cispo_clip_ratio"] = float((((coef_1 > self.eps_high) & (a > 0)).float() * mask).sum()) / tokens
        return loss, stats

    def _rloo(self, logp, mask, a, mb, sequences: float):
        logps = (logp * mask).sum(1)
        ratio = torch.exp(logps - mb["old_logps"].sum(1))
        loss = clipped_surrogate(ratio, a, self.eps_low, self.eps_high).sum() / sequences
        low = ((ratio < 1 - self.eps_low) & (a < 0)).float()
        high = ((ratio > 1 + self.eps_high) & (a > 0)).float()
        return loss, {"clip_ratio/low_mean": float(low.sum()) / sequences,
                      "clip_ratio/high_mean": float(high.sum()) / sequences,
                      "clip_ratio/region_mean": float((low + high).clamp(max=1).sum()) / sequences,
                      "clip_ratio/low_min": float(low.min()), "clip_ratio/high_max": float(high.max())}

    def save(self, root: str, iteration: int, consumed_samples: int, consumed_tokens: int) -> None:
        """PPO: the critic, next to the policy's checkpoint (the trainer saves the policy)."""
        if self.critic is not None:
            self.critic.save(root, iteration, consumed_samples, consumed_tokens)

    def metrics(self) -> Dict[str, float]:
        """This rank's shares of the step's metrics; a rollout's metrics (the same on every rank) only
        on the step that generated it, as trl logs them."""
        out = dict(self.sums)
        if not state.get().is_last_stage:  # no loss here: neutral values for the sums, minima and maxima
            out = {k: float("inf") if k.endswith("_min") else float("-inf") if k.endswith("_max") else 0.0
                   for k in out}
        out.update(self.rollout_metrics)
        return out


def shares_prompts(cfg) -> bool:
    """Whether the rows of a prompt compute it once (--no-share-prompts: never): the whole model on one
    pipeline stage (stages exchange fixed shapes) and no dropout (one mask over a shared prompt would
    tie its rows' noise together, where rows computed apart draw their own)."""
    m = cfg.model
    return cfg.rl.share_prompts and state.get().pp_size == 1 and m.hidden_dropout == 0 and m.attention_dropout == 0


def shared_prompts(prompt_index: torch.Tensor, tokens: torch.Tensor) -> Optional[SharedPrefix]:
    """The rows of one micro-batch that complete the same prompt compute it once (and the first
    completion tokens they agree on), in every forward pass over them (policy, old and reference
    log-probs, PPO's critic); None when no prompt repeats."""
    leader = group_leaders(prompt_index)
    if bool((leader == torch.arange(leader.numel(), device=leader.device)).all()):
        return None
    s = state.get()
    return SharedPrefix(leader, common_prefixes(tokens, leader), tokens.shape[1],
                        s.tp_size if s.sequence_parallel else 1)


def clipped_surrogate(ratio: torch.Tensor, a: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """PPO's clipped objective, negated: ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``."""
    return -torch.min(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)


def _share_from_first(x: torch.Tensor, group) -> torch.Tensor:
    """``x`` of the group's first rank on every rank of ``group`` (the others pass zeros)."""
    x = x.clone()
    nan = torch.isnan(x)
    payload = torch.stack([torch.nan_to_num(x, nan=0.0), nan.float()])
    dist.all_reduce(payload, group=group)
    return torch.where(payload[1] > 0, torch.full_like(x, float("nan")), payload[0])


def _gather_rows(rows: torch.Tensor, positions: torch.Tensor, total: int, device) -> torch.Tensor:
    """The [total, k] table (on the CPU) of every data-parallel rank's ``rows``, each placed at its
    ``positions`` in the global batch."""
    s = state.get()
    payload = torch.cat([positions.double()[:, None], rows.double()], 1).to(device)
    gathered = [payload]
    if s.dp_group is not None and s.dp_size > 1:
        gathered = [torch.zeros_like(payload) for _ in range(s.dp_size)]
        dist.all_gather(gathered, payload, group=s.dp_group)
    table = torch.full((total, rows.shape[1]), float("nan"), dtype=torch.float64)
    for g in gathered:
        g = g.cpu()
        table[g[:, 0].long()] = g[:, 1:]
    return table.float()
