"""KTO (``dpo_gpt.py --pref-method kto``) as a train-step objective: trl 1.x's KTOTrainer loss on unpaired examples.

A micro-batch holds n examples (megalite.data.unpaired): their rows, a ``label`` (1 desirable)
and, for the ``kto`` loss, n KL rows (prompt i with the completion of example i - 1 of the
micro-batch). An example's log-ratio is ``logp - ref logp`` of its completion (summed log-probs,
as DPO's, from the vocab-parallel per-token losses).

The KL estimate is trl's: the mean over the KL rows of ``policy logp - reference logp``,
detached, clamped at 0. trl averages it over one micro-batch per process, gathered over the
processes; here ``prepare`` runs forward-only passes of the policy and of the reference over
the KL rows of the whole global batch and all-reduces the sum over data-parallel ranks, so the
estimate is computed once per step over the global batch: equal to trl's whenever trl's step
is one micro-batch per process (no gradient accumulation).

Losses (trl's ``loss_type``): ``kto`` (desirable: ``1 - sigmoid(beta (ratio - kl))``,
undesirable: ``1 - sigmoid(beta (kl - ratio))``) and ``apo_zero_unpaired`` (``1 - sigmoid(beta
ratio)`` / ``sigmoid(beta ratio)``, no KL rows), weighted by --kto-desirable-weight /
--kto-undesirable-weight; the step's loss is the mean over the examples of the global batch
(trl: the mean over the desirable and undesirable examples of the weighted losses). Metrics
carry trl's names: ``kl``, ``rewards/chosen`` / ``logps/chosen`` (means over the desirable
examples), ``rewards/rejected`` / ``logps/rejected`` (undesirable), ``rewards/margins`` (their
difference), ``logits/chosen`` / ``logits/rejected`` (each token's mean logit over the
vocabulary, averaged over the desirable / undesirable completion tokens: the model returns it with
its losses, ``LMHead.mean_logits``); like trl, a step without desirable (or undesirable)
examples reports none of their metrics.
"""

import functools
from typing import Dict

import torch

from megalite.config import Config
from megalite.data.unpaired import UnpairedDataset, build_examples, collate_unpaired, kl_view
from megalite.parallel import state
from megalite.parallel.data_parallel import all_reduce_scalar
from megalite.posttrain.dpo import (
    cached_scores,
    completion_logps,
    live_reference,
    read_scores,
    reference_pass,
    return_mean_logits,
    score_items,
    score_once,
    weights_fingerprint,
)
from megalite.posttrain.stage import PreferenceStage

LOSS_TYPES = ("kto", "apo_zero_unpaired")


def kto_losses(kind: str, ratio: torch.Tensor, desirable: torch.Tensor, kl: float, beta: float,
               desirable_weight: float, undesirable_weight: float) -> torch.Tensor:
    """trl's weighted per-example loss from the log-ratios ``ratio`` (policy - reference)."""
    if kind == "kto":
        chosen, rejected = 1 - torch.sigmoid(beta * (ratio - kl)), 1 - torch.sigmoid(beta * (kl - ratio))
    else:  # apo_zero_unpaired
        chosen, rejected = 1 - torch.sigmoid(beta * ratio), torch.sigmoid(beta * ratio)
    return torch.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)


class KTOObjective:
    """``loss_fn`` of the train step for KTO; see the module docstring. ``reference(batch)`` fills
    ``ref_logps`` (and ``ref_kl_logps``) of each micro-batch; ``policy(micro_batches)`` stores the
    policy's summed log-probs under ``policy_logps`` (a forward-only pass, for the KL rows)."""

    def __init__(self, kto_cfg, beta: float, reference, policy=None):
        self.kind, self.beta = kto_cfg.kto_loss_type, beta
        self.weights = (kto_cfg.kto_desirable_weight, kto_cfg.kto_undesirable_weight)
        self.reference, self.policy = reference, policy
        self.count_keys = ("examples", "desirable", "undesirable", "desirable_tokens", "undesirable_tokens") + \
            (("kl_examples",) if self.kind == "kto" else ())
        self.kl_sum, self.kl, self.counts, self.sums = 0.0, 0.0, {}, {}

    def prepare(self, batch) -> None:
        self.reference(batch)
        if self.kind != "kto":
            return
        views = [kl_view(mb) for mb in batch]
        self.policy(views)
        total = sum(float((v["policy_logps"] - mb["ref_kl_logps"]).sum()) for v, mb in zip(views, batch)
                    if "policy_logps" in v)  # the last pipeline stage
        s = state.get()
        self.kl_sum = all_reduce_scalar(all_reduce_scalar(total, s.pp_group), s.dp_group)

    def begin_step(self, counts: Dict[str, float]) -> None:
        self.counts, self.sums = counts, {}
        self.kl = max(self.kl_sum / counts["kl_examples"], 0.0) if self.kind == "kto" else 0.0

    def __call__(self, per_token_losses: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``per_token_losses``: the model's losses and mean logits, [rows, seq, 2] (``LMHead.mean_logits``)."""
        logps = completion_logps(per_token_losses, mb)
        ratio = logps - mb["ref_logps"]
        desirable = mb["label"] > 0.5
        losses = kto_losses(self.kind, ratio, desirable, self.kl, self.beta, *self.weights)
        with torch.no_grad():
            shares = {"kl": self.kl * len(logps) / self.counts["examples"]}
            rewards = self.beta * ratio
            for side, rows, count in (("chosen", desirable, "desirable"), ("rejected", ~desirable, "undesirable")):
                if self.counts[count] > 0:
                    shares[f"rewards/{side}"] = rewards[rows].sum().item() / self.counts[count]
                    shares[f"logps/{side}"] = logps[rows].sum().item() / self.counts[count]
            if self.counts["desirable"] > 0 and self.counts["undesirable"] > 0:
                shares["rewards/margins"] = shares["rewards/chosen"] - shares["rewards/rejected"]
            logits = (per_token_losses[..., 1] * mb["loss_mask"]).sum(1)  # each token's mean logit, summed
            for side, rows, count in (("chosen", desirable, "desirable_tokens"),
                                      ("rejected", ~desirable, "undesirable_tokens")):
                if self.counts[count] > 0:  # trl: the mean over the desirable (undesirable) completion tokens
                    shares[f"logits/{side}"] = logits[rows].sum().item() / self.counts[count]
            for k, v in shares.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
        return losses.sum() / self.counts["examples"]

    def metrics(self) -> Dict[str, float]:
        """This rank's share of the step's metrics (the trainer sums the shares over ranks); the
        same keys on every rank, as they depend on global counts only."""
        names = ["kl"]
        for side, count in (("chosen", "desirable"), ("rejected", "undesirable")):
            if self.counts.get(count, 0) > 0:
                names += [f"rewards/{side}", f"logps/{side}"]
        if self.counts.get("desirable", 0) > 0 and self.counts.get("undesirable", 0) > 0:
            names.append("rewards/margins")
        for side, count in (("chosen", "desirable_tokens"), ("rejected", "undesirable_tokens")):
            if self.counts.get(count, 0) > 0:
                names.append(f"logits/{side}")
        return {k: self.sums.get(k, 0.0) for k in names}


class KTOStage(PreferenceStage):
    """``dpo_gpt.py --pref-method kto``: single completions marked desirable or not, trl's KTO loss
    against a reference model."""

    name = "kto"
    build_items, dataset = build_examples, UnpairedDataset

    def rows_per_sample(self, cfg: Config) -> int:
        return 1

    def prepare_reference(self, cfg: Config) -> None:
        if not cfg.reference.ref_load and cfg.lora.lora_rank == 0:  # LoRA: the adapters disabled
            cfg.reference.ref_load = cfg.checkpoint.load

    def collate(self, cfg: Config):
        pad_to, multiple = self.padding(cfg)
        return functools.partial(collate_unpaired, seq_length=cfg.data.seq_length, pad_to=pad_to,
                                 multiple_of=multiple, kl_rows=cfg.kto.kto_loss_type == "kto")

    def objective(self, cfg: Config, context):
        return build_kto_objective(cfg, context)


def build_kto_objective(cfg, ctx) -> KTOObjective:
    """The run's KTO objective: the reference of posttrain.dpo (a frozen copy, or the policy
    with its LoRA adapters disabled), live or precomputed, and the policy's KL-row pass."""
    kl = cfg.kto.kto_loss_type == "kto"
    live, weights = live_reference(cfg, ctx)

    def rows_and_kl_rows(batch):  # one forward-only pass over the micro-batches and their KL rows
        views = [kl_view(mb) for mb in batch] if kl else []
        live(list(batch) + views)
        for mb, view in zip(batch, views):
            if "ref_logps" in view:
                mb["ref_kl_logps"] = view["ref_logps"]

    return_mean_logits(ctx.model)  # trl's logits/chosen and logits/rejected
    precompute = cfg.dpo.precompute_ref_log_probs
    reference = precomputed(cfg, ctx, live, weights, kl) if precompute else rows_and_kl_rows
    policy = reference_pass(ctx.model, ctx.activation_shape, ctx.dtype, "policy_logps") if kl else None
    return KTOObjective(cfg.kto, cfg.dpo.dpo_beta, reference, policy)


def precomputed(cfg, ctx, live, weights, kl: bool):
    """--precompute-ref-log-probs: the reference scores, once, now, every example of the training
    and held-out sets (keyed by example) and every KL row the run and its evaluations will meet
    (keyed by sample number, as a KL row depends on its micro-batch: the sampler's micro-batch j
    holds samples [j mbs, (j + 1) mbs) and goes to data-parallel rank j mod dp). Each rank scores
    a share, the tables are summed over ranks (posttrain.dpo.score_once), and the reference model
    is dropped with ``live``, so training holds one model. Each table is cached as DPO's are
    (posttrain.dpo.cached_scores); the KL rows' table is also keyed by the sample order (the seed
    and the number of samples), so a resumed run or a rerun reads both instead of scoring again."""
    s, mbs, device = state.get(), cfg.training.micro_batch_size, ctx.device
    collate = ctx.collate
    fingerprint = weights_fingerprint(weights, device)

    def score_kl_rows(ds):
        starts = range(s.dp_rank * mbs, len(ds) - mbs + 1, s.dp_size * mbs)
        batch = [{k: v.to(device) for k, v in collate([ds[i] for i in range(j, j + mbs)]).items()} for j in starts]
        return score_once(live, [kl_view(mb) for mb in batch], "sample_index", 1, len(ds), device)

    tables = []
    for ds in (ctx.train_ds, ctx.valid_ds):
        if ds is None:
            tables.append(None)
            continue
        examples = cached_scores(cfg, ctx, ds.items, fingerprint, "examples",
                                 lambda: score_items(cfg, ctx, live, ds, 1, "example_index"), (len(ds.items), 1))
        kl_rows = cached_scores(cfg, ctx, ds.items, fingerprint, f"KL rows of {len(ds)} samples, seed {ds.seed}",
                                lambda: score_kl_rows(ds), (len(ds), 1)) if kl else None
        tables.append((examples, kl_rows))

    def look_up(batch):
        for mb in batch:
            examples, kl_rows = tables[int(mb["held_out"][0])]
            mb["ref_logps"] = read_scores(examples, mb["example_index"])
            if kl_rows is not None:
                mb["ref_kl_logps"] = read_scores(kl_rows, mb["sample_index"])

    return look_up
