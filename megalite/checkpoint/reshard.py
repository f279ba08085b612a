"""Reading a checkpoint in another parallel layout.

A checkpoint holds one file per (tensor, pipeline) rank and, with the distributed optimizer,
one optimizer shard per data-parallel rank. ``load_full_state`` presents the model weights
by global name, tensor-parallel shards gathered on access (the HF exporter and one-process
generation use it); ``load_resharded`` loads weights *and* optimizer state into a model laid
out in any other TP / PP / virtual-pipeline / DP / ZeRO arrangement: each saved rank's
optimizer pieces are assembled into its local tensors, gathered across the saved tensor-
parallel ranks like the weights, and cut again the way initialisation cuts a full tensor
for this rank. Of the package it imports only layout.
"""

import os
from collections.abc import Mapping
from typing import Dict, List, Tuple

import torch

from megalite.checkpoint.layout import TRACKER, find_checkpoint, load_file, model_files, optimizer_shards
from megalite.config import Config, ModelConfig
from megalite.errors import MegaliteError
from megalite.parallel.init import shard_like

OPTIMIZER_KINDS = ("master", "exp_avg", "exp_avg_sq")


class _GatheredState(Mapping):
    """The model state of a checkpoint by name: each tensor from the pipeline stage that holds
    it (the first, for a tied embedding both ends hold), its tensor-parallel shards gathered on
    access, so conversion holds at most one gathered tensor at a time (files are mmapped)."""

    def __init__(self, stages, cfg: ModelConfig):
        self.cfg = cfg
        self.owner = {}
        for shards in stages:  # stages in pipeline order, each a list of TP-rank payloads
            for name in shards[0]["model"]:
                self.owner.setdefault(name, shards)

    def __getitem__(self, name: str) -> torch.Tensor:
        shards = self.owner[name]
        split = shards[0].get("tensor_parallel", {}).get(name)
        parts = [p["model"][name] for p in shards]
        if split is None:
            return parts[0]
        if split.get("kv_head_replicas"):
            return gather_replicated_qkv(parts, self.cfg)
        parts = parts[:: split.get("replicas", 1)]
        return torch.cat(parts, dim=split["dim"])

    def __iter__(self):
        return iter(self.owner)

    def __len__(self) -> int:
        return len(self.owner)


def _rank_files(load: str) -> Tuple[str, List[List[str]]]:
    """(iteration folder, model files grouped by pipeline stage, tensor-parallel ranks in order)."""
    folder = find_checkpoint(load)
    if folder is None:
        raise MegaliteError(f"{load}: no checkpoint found (no {TRACKER})")
    stages: Dict[int, List[str]] = {}
    for f in model_files(folder):  # mp_rank_TT or mp_rank_TT_PPP
        parts = os.path.basename(os.path.dirname(f)).split("_")[2:]
        stages.setdefault(int(parts[1]) if len(parts) > 1 else 0, []).append(f)
    return folder, [stages[k] for k in sorted(stages)]


def load_full_state(load: str):
    """(model state by name, gathered over tensor- and pipeline-parallel files lazily, saved args)."""
    _, stages = _rank_files(load)
    payloads = [[load_file(f) for f in files] for files in stages]
    args = payloads[0][0]["args"]
    return _GatheredState(payloads, Config.from_dict(args).model), args


def _optimizer_tensors(model_file: str, payload: Dict) -> Tuple[Dict[str, Dict[str, torch.Tensor]], float]:
    """({kind: {name: this saved rank's local tensor}}, Adam's step) from the pieces in its
    model file and in the distributed-optimizer shards beside it."""
    pieces = list(payload["optimizer"].get("pieces", []))
    for shard in optimizer_shards(model_file):
        pieces += load_file(shard)["pieces"]
    out: Dict[str, Dict[str, torch.Tensor]] = {kind: {} for kind in OPTIMIZER_KINDS}
    step = 0.0
    for e in pieces:
        lo, hi = e["range"]
        step = e.get("step", step)
        for kind in OPTIMIZER_KINDS:
            if kind in e:
                flat = out[kind].setdefault(e["name"], torch.zeros(torch.Size(e["shape"]).numel()))
                flat[lo:hi] = e[kind]
    shaped = {kind: {n: t.view(payload["model"][n].shape) for n, t in named.items()} for kind, named in out.items()}
    return shaped, step


class SavedCheckpoint:
    """Every tensor of a checkpoint by global name, gathered over its tensor-parallel files on
    access: the weights, and each optimizer state (fp32 master, Adam moments)."""

    def __init__(self, load: str, with_optimizer: bool = True):
        _, stages = _rank_files(load)
        self.payloads = [[load_file(f) for f in files] for files in stages]
        self.first = self.payloads[0][0]
        cfg = Config.from_dict(self.first["args"]).model
        self.weights = _GatheredState(self.payloads, cfg)
        self.states, self.step = {}, 0.0
        if with_optimizer:
            local = [[_optimizer_tensors(f, pl) for f, pl in zip(files, stage)]
                     for files, stage in zip(stages, self.payloads)]
            self.states = {kind: _GatheredState([[{"model": tensors[kind],
                                                   "tensor_parallel": pl.get("tensor_parallel", {})}
                                                  for (tensors, _), pl in zip(ranks, stage)]
                                                 for ranks, stage in zip(local, self.payloads)], cfg)
                           for kind in OPTIMIZER_KINDS}
            self.step = local[0][0][1]

    def cut_for(self, model, where: str) -> Tuple[Dict[str, torch.Tensor], List[Dict]]:
        """(weights, optimizer pieces) of ``model``'s parameters as this rank holds them."""
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(self.weights))
        if missing:
            raise MegaliteError(f"{where}: the checkpoint has no {missing[0]} (and {len(missing) - 1} more)")
        weights = {name: shard_like(p, self.weights[name]) for name, p in params.items()}
        pieces = []
        for name, p in params.items():
            if self.states and p.requires_grad:
                entry = {"name": name, "range": [0, p.numel()], "shape": list(p.shape), "step": self.step}
                for kind, gathered in self.states.items():
                    if name in gathered:
                        entry[kind] = shard_like(p, gathered[name]).reshape(-1).float().contiguous()
                pieces.append(entry)
        return weights, pieces


@torch.no_grad()
def load_resharded(load: str, model, optimizer, load_optimizer: bool = True, fit=None) -> Dict:
    """Load weights and (with ``load_optimizer``) optimizer state saved in any parallel layout
    into this rank's ``model`` / ``optimizer``; returns the first saved rank's payload
    (iteration, consumed samples, random states, settings). ``fit``: what the weights go through
    first (as in megalite.checkpoint.load.load_model_state)."""
    saved = SavedCheckpoint(load, with_optimizer=load_optimizer)
    if fit is not None:
        saved.weights = fit(saved.weights)
    weights, pieces = saved.cut_for(model, load)
    params = dict(model.named_parameters())
    for name, w in weights.items():
        params[name].copy_(w)
    optimizer.masters_from_model()
    if load_optimizer:
        optimizer.load_state_dict({"scaler": saved.first["optimizer"]["scaler"], "pieces": pieces})
    return saved.first


def gather_replicated_qkv(shards, cfg: ModelConfig) -> torch.Tensor:
    """The full fused QKV rows from TP ranks that each hold their own query heads followed by
    a copy of the key/value head they share with the next ``replicas - 1`` ranks."""
    groups, d = cfg.num_query_groups, cfg.kv_channels
    replicas, mine = len(shards) // groups, cfg.num_attention_heads // len(shards)
    out = []
    for g in range(groups):
        ranks = shards[g * replicas : (g + 1) * replicas]
        out += [r[: mine * d] for r in ranks] + [ranks[0][mine * d :]]
    return torch.cat(out)
