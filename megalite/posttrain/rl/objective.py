"""GRPO and RLOO as a train-step objective: ``prepare`` turns the step's prompt samples into
rollout rows (generation, rewards, advantages, old and reference log-probs), ``__call__`` is the
policy loss of one micro-batch. Formulas (trl 1.16's GRPOTrainer and RLOOTrainer): docs/rl.md.

Every loss is normalised over the global batch (the trainer hands ``begin_step`` the global
counts of completion tokens and completions), so it does not depend on the micro-batch or
data-parallel split; with one micro-batch per step it is trl's number. With --num-iterations K a
rollout batch is generated once and trained on for K steps against the log-probs the policy
gave it when it was generated ("old" log-probs), as trl does.
"""

from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from megalite.parallel import state
from megalite.posttrain.rl import advantages as adv
from megalite.posttrain.rl.prompts import Prompt
from megalite.posttrain.rl.rollout import row_seeds, training_rows

MAX, MIN = dist.ReduceOp.MAX, dist.ReduceOp.MIN


def token_logps(per_token: torch.Tensor, mb) -> torch.Tensor:
    """Per-token log-probs [rows, seq] from the model's [rows, seq, 2] losses and entropies."""
    return -per_token[..., 0] * mb["loss_mask"]


class PolicyGradient:
    """``loss_fn`` of the train step for GRPO (``algorithm='grpo'``) and RLOO; see the module docstring."""

    count_keys = ("sequences", "loss_mask")  # held-out metrics are means over completions

    def __init__(self, cfg, ctx, rewards, prompts: Dict[bool, List[Prompt]], tokenizer, sample: Callable,
                 reference: Optional[Callable], old: Callable):
        self.rl, self.cfg, self.model = cfg.rl, cfg, ctx.model
        self.rewards, self.prompts, self.tokenizer = rewards, prompts, tokenizer
        self.sample, self.reference, self.old = sample, reference, old
        self.grpo = cfg.rl.algorithm == "grpo"
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
            return
        self._generate(batch, held_out, rollout)
        if not held_out:
            self.cache = (rollout, [{k: v for k, v in mb.items() if k not in ("prompt_index", "sample", "held_out")}
                                    for mb in batch])

    def _generate(self, batch, held_out: bool, rollout: int) -> None:
        t = self.cfg.training
        device = batch[0]["prompt_index"].device
        pool = self.prompts[held_out]
        mine = [pool[int(i)] for mb in batch for i in mb["prompt_index"]]
        samples = torch.cat([mb["sample"] for mb in batch])
        ids = [p.ids for p in mine]
        seeds = row_seeds(t.seed + (1 if held_out else 0), samples.tolist())  # held-out: the same each time
        completions = self.sample(self.model, ids, seeds)
        rows = training_rows(ids, completions, self.cfg.data.seq_length, self.pad)
        stops = {self.tokenizer.eod, self.pad}
        truncated = torch.tensor([len(c) == 0 or c[-1] not in stops for c in completions])
        if self.rl.mask_truncated_completions:
            rows["loss_mask"][truncated] = 0.0
        n = 0
        for mb in batch:
            m = mb["prompt_index"].numel()
            mb.update({k: v[n:n + m].to(device) for k, v in rows.items()})
            mb["sequences"] = torch.ones(m, device=device)
            n += m
        if self.old is not None and (not self.grpo or self.k > 1):  # the policy's log-probs as it generated
            self.old(batch)
        if self.reference is not None:
            self.reference(batch)
        scores = self._my_rewards(mine, completions, device)
        lengths = torch.tensor([float(len(c)) for c in completions])
        kl = self._sequence_kl(batch) if not self.grpo and self.rl.beta else torch.zeros(len(mine))
        positions = samples.cpu() % self.gbs  # each row's place in the global batch
        table = _gather_rows(torch.cat([scores, lengths[:, None], truncated[:, None].float(), kl[:, None]], 1),
                             positions, self.gbs, device)
        nf = scores.shape[1]
        rewards, lengths_all, trunc_all, kl_all = table[:, :nf], table[:, nf], table[:, nf + 1].bool(), table[:, nf + 2]
        w = self.rewards.weights
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
        if not self.grpo and self.rl.beta:
            metrics["kl"] = self._rloo_kl(batch, device)
        self.rollout_metrics = metrics

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
        if self.grpo and self.rl.loss_type == "cispo":
            self.sums["cispo_clip_ratio"] = 0.0
        else:
            self.sums.update({"clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0, "clip_ratio/region_mean": 0.0,
                              "clip_ratio/low_min": float("inf"), "clip_ratio/high_max": float("-inf")})
        if self.grpo and self.rl.beta:
            self.sums["kl"] = 0.0
        self.metric_ops = {k: MAX for k in self.rollout_metrics}
        self.metric_ops.update({"clip_ratio/low_min": MIN, "clip_ratio/high_max": MAX})

    def __call__(self, per_token: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
        mask = mb["loss_mask"]
        logp = -per_token[..., 0]
        a = mb["advantages"].float()
        tokens, sequences = max(self.counts["loss_mask"], 1.0), self.counts["sequences"]
        if self.grpo:
            loss, stats = self._grpo(logp, mask, a, mb, tokens, sequences)
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

    def _grpo(self, logp, mask, a, mb, tokens: float, sequences: float):
        rl = self.rl
        old = mb["old_logps"] if "old_logps" in mb else logp.detach()
        coef_1 = torch.exp(logp - old)
        a = a[:, None]
        if rl.loss_type == "cispo":
            per_token = -torch.clamp(coef_1, max=self.eps_high).detach() * a * logp
        else:
            coef_2 = torch.clamp(coef_1, 1 - self.eps_low, 1 + self.eps_high)
            per_token = -torch.min(coef_1 * a, coef_2 * a)
        stats = {}
        if rl.beta:
            d = mb["ref_logps"] - logp
            kl = torch.exp(d) - d - 1
            if rl.kl_bias_correction:  # trl's default: the unbiased reverse-KL gradient
                kl = kl * coef_1
            per_token = per_token + rl.beta * kl
            stats["kl"] = float((kl.detach() * mask).sum()) / tokens
        if rl.loss_type == "grpo":
            loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / sequences
        elif rl.loss_type == "dr_grpo":
            loss = (per_token * mask).sum() / (sequences * rl.max_completion_length)
        else:  # bnpo, dapo, cispo: the mean over the global batch's completion tokens
            loss = (per_token * mask).sum() / tokens
        if rl.loss_type != "cispo":
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
        clipped = torch.clamp(ratio, 1 - self.eps_low, 1 + self.eps_high)
        loss = -torch.min(ratio * a, clipped * a).sum() / sequences
        low = ((ratio < 1 - self.eps_low) & (a < 0)).float()
        high = ((ratio > 1 + self.eps_high) & (a > 0)).float()
        return loss, {"clip_ratio/low_mean": float(low.sum()) / sequences,
                      "clip_ratio/high_mean": float(high.sum()) / sequences,
                      "clip_ratio/region_mean": float((low + high).clamp(max=1).sum()) / sequences,
                      "clip_ratio/low_min": float(low.min()), "clip_ratio/high_max": float(high.max())}

    def metrics(self) -> Dict[str, float]:
        """This rank's shares of the step's metrics; a rollout's metrics (the same on every rank) only
        on the step that generated it, as trl logs them."""
        out = dict(self.sums)
        if not state.get().is_last_stage:  # no loss here: neutral values for the sums, minima and maxima
            out = {k: float("inf") if k.endswith("_min") else float("-inf") if k.endswith("_max") else 0.0
                   for k in out}
        out.update(self.rollout_metrics)
        return out


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
