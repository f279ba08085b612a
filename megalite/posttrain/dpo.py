"""DPO losses as a train-step objective: the trainer's step with pairs instead of tokens.

A micro-batch holds n pairs as 2n rows (chosen first, rejected second; megalite.data.preference).
The model's per-token losses are the vocab-parallel cross entropy, so a completion's summed
log-probability is ``-(losses * loss_mask).sum(1)``, computed without gathering the vocabulary.
The reference model's sums come from a forward-only pass of the same micro-batches before the
step (``prepare``); SimPO is reference-free (a run of ``simpo``, optionally with ``sft``, has no
reference model). Every loss is trl 1.x's DPOTrainer formula (SimPO: trl's CPOTrainer); the
loss of a step is the mean over the pairs of the global batch, so it does not depend on
micro-batch or data-parallel sizes (the trainer hands ``begin_step`` the global counts of
``count_keys``). Metrics carry trl's names and are means over the global batch's pairs.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pickle
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from megalite.checkpoint.load import load_checkpoint
from megalite.config import Config
from megalite.data.preference import PreferenceDataset, build_pairs, collate_pairs
from megalite.errors import MegaliteError
from megalite.model.gpt import build_stage_model
from megalite.model.heads import LMHead
from megalite.parallel import state
from megalite.parallel.init import initialize
from megalite.parallel.pipeline import forward_backward
from megalite.posttrain.lora import adapters_disabled
from megalite.posttrain.stage import PreferenceStage
from megalite.utils.atomic import atomic_write

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down",
              "sigmoid_norm", "sft", "simpo")
REFERENCE_FREE = ("simpo", "sft")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "logits/chosen", "logits/rejected")


def parse_losses(dpo_cfg) -> List[Tuple[str, float]]:
    """[(loss type, weight)] from --dpo-loss-type / --dpo-loss-weights."""
    kinds = [k.strip() for k in dpo_cfg.dpo_loss_type.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in LOSS_TYPES]
    if not kinds or unknown:
        raise MegaliteError(f"--dpo-loss-type {dpo_cfg.dpo_loss_type!r}: unknown {unknown or 'empty'}; "
                            f"choose from {', '.join(LOSS_TYPES)}")
    weights = ([float(w) for w in dpo_cfg.dpo_loss_weights.split(",")] if dpo_cfg.dpo_loss_weights
               else [1.0] * len(kinds))
    if len(weights) != len(kinds):
        raise MegaliteError(f"--dpo-loss-weights has {len(weights)} values for {len(kinds)} --dpo-loss-type entries")
    if ("robust" in kinds or "simpo" in kinds) and not 0 <= dpo_cfg.dpo_label_smoothing < 0.5:
        raise MegaliteError("--dpo-label-smoothing must be in [0, 0.5) for the robust and simpo losses")
    if "simpo" in kinds and not set(kinds) <= set(REFERENCE_FREE):
        raise MegaliteError("--dpo-loss-type simpo is reference-free: combine it only with sft (trl's CPO "
                            "cpo_alpha), not with losses that need a reference model")
    return list(zip(kinds, weights))


def reference_free(dpo_cfg) -> bool:
    """SimPO runs (``simpo``, optionally with ``sft``) have no reference model."""
    return "simpo" in (k.strip() for k in dpo_cfg.dpo_loss_type.split(","))


def pair_loss(kind: str, chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor, beta: float,
              label_smoothing: float, simpo_gamma: float = 0.0) -> torch.Tensor:
    """Per-pair loss of one trl loss type from summed completion log-probs (policy and reference)
    and completion lengths. ``sft`` is handled by ``DPOObjective`` (a token mean, not a pair one);
    ``simpo`` gets the length-averaged log-probs and no reference (zeros)."""
    c, r = chosen - ref_chosen, rejected - ref_rejected
    delta = c - r
    if kind == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if kind == "hinge":
        return torch.relu(1 - beta * delta)
    if kind in ("ipo", "sigmoid_norm"):  # length-normalised margins
        d = c / chosen_len.clamp(min=1.0) - r / rejected_len.clamp(min=1.0)
        return (d - 1 / (2 * beta)) ** 2 if kind == "ipo" else -F.logsigmoid(beta * d)
    if kind == "robust":
        ls = label_smoothing
        return (-(1 - ls) * F.logsigmoid(beta * delta) + ls * F.logsigmoid(-beta * delta)) / (1 - 2 * ls)
    if kind == "simpo":  # trl CPO: a target margin gamma, conservative (not robust) label smoothing
        z = beta * delta - simpo_gamma
        return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    if kind == "bco_pair":
        return -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r)
    if kind == "nca_pair":
        return -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)
    if kind == "sppo_hard":
        return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    if kind == "apo_zero":
        return 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r)
    if kind == "apo_down":
        return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * delta)
    raise MegaliteError(f"unknown DPO loss type {kind!r}")


def completion_logps(per_token: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens, from the per-token losses (or
    the model's [batch, seq, 2] losses and mean logits)."""
    losses = per_token[..., 0] if per_token.dim() == 3 else per_token
    return -(losses * mb["loss_mask"]).sum(1)


class DPOObjective:
    """``loss_fn`` of the train step for DPO; see the module docstring."""

    count_keys = ("pairs", "chosen_tokens", "rejected_tokens")

    def __init__(self, dpo_cfg, reference=None):
        self.losses = parse_losses(dpo_cfg)
        self.beta, self.label_smoothing, self.simpo_gamma = dpo_cfg.dpo_beta, dpo_cfg.dpo_label_smoothing, \
            dpo_cfg.simpo_gamma
        self.reference_free = reference_free(dpo_cfg)
        self.reference = reference  # callable(batch) filling mb["ref_logps"], or None (they come with the data)
        self.counts, self.sums = {}, {}

    def prepare(self, batch) -> None:
        if self.reference is not None:
            self.reference(batch)

    def begin_step(self, counts: Dict[str, float]) -> None:
        self.counts, self.sums = counts, {k: 0.0 for k in METRICS}

    def __call__(self, per_token: torch.Tensor, mb: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``per_token``: the model's losses and mean logits, [rows, seq, 2] (``LMHead.mean_logits``)."""
        n, pairs = mb["pairs"].numel(), self.counts["pairs"]
        sums = completion_logps(per_token, mb)
        lengths = mb["loss_mask"].sum(1)
        if self.reference_free:  # trl CPO's SimPO: length-averaged log-probs, rewards without a reference
            logps, ref = sums / lengths.clamp(min=1.0), torch.zeros_like(sums)
        else:
            logps, ref = sums, mb["ref_logps"]
        chosen, rejected = logps[:n], logps[n:]
        ref_chosen, ref_rejected = ref[:n], ref[n:]
        loss = 0.0
        for kind, weight in self.losses:
            if kind == "sft":  # trl: the mean NLL over the chosen completion tokens
                part = -sums[:n].sum() / self.counts["chosen_tokens"]
            else:
                part = pair_loss(kind, chosen, rejected, ref_chosen, ref_rejected, lengths[:n], lengths[n:],
                                 self.beta, self.label_smoothing, self.simpo_gamma).sum() / pairs
            loss = loss + weight * part
        with torch.no_grad():
            rc, rr = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)
            for name, v in zip(METRICS, (rc, rr, (rc > rr).float(), rc - rr, chosen, rejected)):
                self.sums[name] += v.sum().item() / pairs
            logits = (per_token[..., 1] * mb["loss_mask"]).sum(1)  # trl: the mean over completion tokens
            self.sums["logits/chosen"] += logits[:n].sum().item() / self.counts["chosen_tokens"]
            self.sums["logits/rejected"] += logits[n:].sum().item() / self.counts["rejected_tokens"]
        return loss

    def metrics(self) -> Dict[str, float]:
        """This rank's share of the step's metrics (the trainer sums the shares over ranks)."""
        return dict(self.sums)


def reference_pass(model, activation_shape, dtype, key: str = "ref_logps", score=completion_logps):
    """A ``reference`` for DPOObjective: a forward-only pass of ``model`` over the step's micro-batches
    storing ``score`` of each row (its summed completion log-prob) in ``mb[key]`` (on the last pipeline
    stage, where the loss is computed). KTO also runs the policy this way over its KL rows; online RL
    stores per-token log-probs."""
    def store(losses, mb):
        mb[key] = score(losses, mb).detach()
        return losses.new_zeros(())

    def run(batch):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            forward_backward(model, batch, store, activation_shape, dtype, forward_only=True)
        model.train(was_training)

    return run


class DPOStage(PreferenceStage):
    """``dpo_gpt.py --pref-method dpo``: preference pairs, a trl DPO loss against a reference model."""

    name = "dpo"
    build_items, dataset = build_pairs, PreferenceDataset

    def prepare_reference(self, cfg: Config) -> None:
        needs_reference(cfg)

    def collate(self, cfg: Config):
        pad_to, multiple = self.padding(cfg)
        return functools.partial(collate_pairs, pad_to=pad_to, multiple_of=multiple)

    def objective(self, cfg: Config, context):
        return build_dpo_objective(cfg, context)


def needs_reference(cfg: Config) -> None:
    """A run with a reference model scores it with the starting weights unless --ref-load names
    others (with LoRA: the policy with its adapters disabled)."""
    if not reference_free(cfg.dpo) and not cfg.reference.ref_load and cfg.lora.lora_rank == 0:
        cfg.reference.ref_load = cfg.checkpoint.load


class _NoOptimizer:
    """What load_checkpoint needs of an optimizer for a frozen model: nothing."""

    def masters_from_model(self):
        pass


def build_dpo_objective(cfg, ctx) -> DPOObjective:
    """The run's DPO objective with its reference; the model also returns each token's mean
    logit (trl's ``logits/chosen`` and ``logits/rejected``)."""
    return_mean_logits(ctx.model)
    return DPOObjective(cfg.dpo, build_reference(cfg, ctx))


def return_mean_logits(model) -> None:
    """Make ``model``'s forward(labels) return [rows, seq, 2]: each token's loss and mean logit."""
    for m in model.modules():
        if isinstance(m, LMHead):
            m.mean_logits = True


def build_reference(cfg, ctx):
    """DPO's reference: none for SimPO; else the live pass of ``live_reference``, or its
    precomputed scores."""
    if reference_free(cfg.dpo):
        if cfg.reference.ref_load or cfg.dpo.precompute_ref_log_probs:
            raise MegaliteError("--dpo-loss-type simpo uses no reference model: drop --ref-load and "
                                "--precompute-ref-log-probs")
        return None
    run, weights = live_reference(cfg, ctx)
    return precomputed(cfg, ctx, run, weights) if cfg.dpo.precompute_ref_log_probs else run


def live_reference(cfg, ctx, score=completion_logps):
    """(the reference pass of a run, the model holding its frozen weights): with LoRA (and no
    --ref-load) the policy itself with its adapters disabled; otherwise a frozen copy built and
    sharded like the policy, loaded from --ref-load (``prepare`` sets it to the run's starting
    weights when not given)."""
    shape, dtype = ctx.activation_shape, ctx.dtype
    if cfg.lora.lora_rank > 0 and not cfg.reference.ref_load:
        run = reference_pass(ctx.model, shape, dtype, score=score)

        def base(batch):
            with adapters_disabled(ctx.model):
                run(batch)

        return base, ctx.model
    if not cfg.reference.ref_load:
        raise MegaliteError("this run needs a reference model: give --load (its weights are the reference) or "
                            "--ref-load")
    model = build_stage_model(cfg, None)
    initialize(model, cfg.training.seed)
    model.to(device=ctx.device, dtype=dtype)
    ckpt = dataclasses.replace(cfg.checkpoint, load=cfg.reference.ref_load, finetune=True, no_load_optim=True)
    load_checkpoint(dataclasses.replace(cfg, checkpoint=ckpt), model, _NoOptimizer())
    for p in model.parameters():
        p.requires_grad_(False)
    return reference_pass(model, shape, dtype, score=score), model


def score_once(reference, batch, index_key: str, rows: int, size: int, device) -> torch.Tensor:
    """A ``[size, rows]`` table of reference scores (``rows`` per item: DPO's chosen and rejected):
    ``reference`` runs over ``batch`` (this rank's share of the items, whole micro-batches) and each
    micro-batch's ``ref_logps`` land at its items' ``index_key``; as an item is scored by one
    data-parallel rank's last pipeline stage, sums over the stages and ranks fill the table."""
    s = state.get()
    if batch:
        reference(batch)
    table = torch.zeros(size, rows, dtype=torch.float64, device=device)
    for mb in batch:
        if "ref_logps" in mb:  # the last pipeline stage
            table[mb[index_key]] = mb["ref_logps"].view(rows, -1).T.double()
    for group in (s.pp_group, s.dp_group):
        if group is not None:
            torch.distributed.all_reduce(table, group=group)
    return table.float()


def read_scores(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The scores of ``score_once``'s table for a micro-batch's items, in its row order."""
    return table[index].T.reshape(-1)


def precomputed(cfg, ctx, reference, weights):
    """--precompute-ref-log-probs: ``reference`` scores every pair of the training and held-out
    sets once (``score_items``) and is then dropped with its model, so training holds one model;
    steps and evaluations read the scores by ``pair_index`` from their set's table. Each table is
    cached next to its pairs' cache (``cached_scores``), so a resumed run or a rerun does not
    score again."""
    fingerprint = weights_fingerprint(weights, ctx.device)
    tables = [None if ds is None else cached_scores(cfg, ctx, ds.items, fingerprint, "pairs",
                                                    lambda ds=ds: score_items(cfg, ctx, reference, ds, 2),
                                                    (len(ds.items), 2))
              for ds in (ctx.train_ds, ctx.valid_ds)]

    def look_up(steps_batch):
        for mb in steps_batch:
            mb["ref_logps"] = read_scores(tables[int(mb["held_out"][0])], mb["pair_index"])

    return look_up


def score_items(cfg, ctx, reference, ds, rows: int, index_key: str = "pair_index") -> torch.Tensor:
    """[items, rows] reference log-probs of every item of ``ds`` (an ItemDataset), on every rank:
    each data-parallel rank scores a share, in whole micro-batches (pipeline stages need fixed
    shapes), and ``score_once`` sums the shares."""
    s, mbs, n = state.get(), cfg.training.micro_batch_size, len(ds.items)
    mine = np.arange(s.dp_rank, n, s.dp_size)
    mine = np.resize(mine, -(-len(mine) // mbs) * mbs)
    collate = ctx.collate
    batch = [collate([ds.item(int(k), int(k)) for k in mine[i:i + mbs]]) for i in range(0, len(mine), mbs)]
    batch = [{k: v.to(ctx.device) for k, v in mb.items()} for mb in batch]
    return score_once(reference, batch, index_key, rows, n, ctx.device)


def cached_scores(cfg, ctx, items, fingerprint: str, what: str, score, shape: Tuple[int, int]) -> torch.Tensor:
    """A table of reference log-probs of ``items`` (cached pairs or KTO examples), from the cache
    or ``score()`` (and cached). The cache file is named by a hash of the items' cache entries
    (and the held-out split), the reference weights' ``fingerprint``, the dtype, the layout that
    scores them and ``what`` the table holds. A cached table is loaded as plain tensors only and
    must have ``shape`` ([items, rows]) and finite log-probs (<= 0), else the run stops naming
    the file (``check_table``); it is never rescored over silently."""
    s, t = state.get(), cfg.training
    picks = None if items.picks is None else hashlib.md5(items.picks.tobytes()).hexdigest()
    description = {"items": [st.prefix for st in items.stores], "picks": picks, "weights": fingerprint,
                   "dtype": str(ctx.dtype), "table": what,
                   "layout": [s.tp_size, s.pp_size, s.dp_size, t.micro_batch_size, s.sequence_parallel]}
    key = hashlib.md5(json.dumps(description, sort_keys=True).encode()).hexdigest()
    path = os.path.join(os.path.dirname(items.stores[0].prefix), f"{key}-ref_logps.pt")
    found = torch.tensor([float(os.path.isfile(path))])
    if torch.distributed.is_initialized():  # every rank takes the same branch
        torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MIN)
    if found.item():
        return check_table(path, shape).to(ctx.device)
    table = score()
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        with atomic_write(path, "wb") as f:
            torch.save(table.cpu(), f)
        print(f"reference log-probs ({what}) cached in {path}", flush=True)
    return table


def check_table(path: str, shape: Tuple[int, int]) -> torch.Tensor:
    """The table cached at ``path``, loaded with ``weights_only`` (no code runs), if it is a float
    tensor of ``shape`` holding finite log-probs (<= 0, with room for rounding); otherwise one
    error naming the file: a damaged or foreign file would train on wrong references silently."""
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        problem = f"cannot be loaded as plain tensors ({type(e).__name__})"
    else:
        if not isinstance(table, torch.Tensor) or not table.is_floating_point():
            problem = f"holds {type(table).__name__ if not isinstance(table, torch.Tensor) else table.dtype}"
        elif tuple(table.shape) != tuple(shape):
            problem = f"holds a table of shape {list(table.shape)}"
        elif not torch.isfinite(table).all() or table.max() > 1e-3:
            bad = table[~torch.isfinite(table) | (table > 1e-3)][0].item()
            problem = f"holds {bad}, not a log-probability"
        else:
            return table
    raise MegaliteError(f"{path}: {problem}, not the reference log-probs of shape {list(shape)} this run needs; "
                        "delete it to score them again")


def weights_fingerprint(model, device) -> str:
    """A hash of the frozen parameters' checksums on every rank: the reference's weights (a
    frozen copy, or the base under LoRA adapters), whatever their checkpoint path."""
    sums = [torch.stack([p.double().sum(), p.double().square().sum()])
            for p in model.parameters() if not p.requires_grad]
    mine = hashlib.md5(torch.stack(sums).cpu().numpy().tobytes()).digest() if sums else bytes(16)
    digests = torch.tensor(list(mine), dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        gathered = [torch.zeros_like(digests) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, digests)
        digests = torch.cat(gathered)
    return hashlib.md5(digests.cpu().numpy().tobytes()).hexdigest()
