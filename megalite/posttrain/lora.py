"""LoRA adapters on megalite's tensor-parallel linear layers.

An adapter adds ``scale * dropout(x) A^T B^T`` to a base layer's output (``layer.adapter``,
see megalite.parallel.layers), with ``scale = alpha / rank`` (``alpha / sqrt(rank)`` with
rsLoRA). There is one adapter per Hugging Face module name, so that they map one to one onto
peft's: q_proj, k_proj and v_proj share our fused QKV layer and each adds into its own rows
of the fused output (laid out group by group, see megalite.model.attention); gate_proj,
up_proj and down_proj are our MLP's gate, fc1 and fc2, o_proj the attention's proj.

Tensor parallelism splits an adapter the way its base is split:
- column-parallel base: A replicated, B split along its outputs exactly as the base rows
  (a replicated key/value head keeps a copy of its B rows, gradient summed over the ranks
  sharing it, as for the base); A's input enters the tensor-parallel region like the base's,
  so A's gradient is summed over the ranks in backward (all-reduce, or reduce-scatter and a
  sequence-parallel sum) and stays equal on every rank;
- row-parallel base: A split along its inputs, its rank-r partial products reduced over the
  ranks, B replicated (a sequence-parallel parameter when the sequence is split).

A and B are initialised as peft does (A kaiming-uniform with a = sqrt(5), B zeros) from the
seed as if on one device, then cut for this rank (``mark``). Base weights are frozen, except a
reward model's score head, which trains in full beside the adapters (peft's ``modules_to_save=["score"]``)
and is saved with them.
"""

import contextlib
import math
import re
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from megalite.config import Config, lora_targets
from megalite.parallel import state
from megalite.parallel.init import mark
from megalite.parallel.layers import column_parallel_linear
from megalite.parallel.mappings import leave_tp_region
from megalite.parallel.pipeline import model_chunks
from megalite.parallel.random import SequenceDropout, tp_rng

# HF module name -> (our block, our layer in it); the HF block name of each of our blocks.
TARGET_LAYERS = {"q_proj": ("attention", "qkv"), "k_proj": ("attention", "qkv"), "v_proj": ("attention", "qkv"),
                 "o_proj": ("attention", "proj"), "gate_proj": ("mlp", "gate"), "up_proj": ("mlp", "fc1"),
                 "down_proj": ("mlp", "fc2")}
HF_BLOCKS = {"attention": "self_attn", "mlp": "mlp"}
TRAINED_IN_FULL = ("score.weight",)  # a reward model's head: fresh, so not frozen
ADAPTER_NAME = re.compile(r"^layers\.(\d+)\.(attention|mlp)\.(\w+)\.adapter\.(\w+)\.lora_([AB])$")


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoraPair(nn.Module):
    """One adapter's two matrices as this rank holds them: lora_A [rank, in], lora_B [out, rank]."""

    def __init__(self, a_shape, b_shape):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(*a_shape))
        self.lora_B = nn.Parameter(torch.empty(*b_shape))


class ColumnLora(nn.Module):
    """The adapters of a column-parallel layer, one per HF target; with ``qkv_layout``
    (local groups, query heads per group, head dim) they fill the q / k / v rows of a fused
    QKV output, zeros where a target has no adapter."""

    def __init__(self, pairs: Dict[str, LoraPair], scale: float, dropout: float,
                 qkv_layout: Optional[Tuple[int, int, int]] = None):
        super().__init__()
        self.targets = list(pairs)
        for t, pair in pairs.items():
            setattr(self, t, pair)
        self.scale, self.qkv_layout = scale, qkv_layout
        self.dropout = SequenceDropout(dropout)  # the base input: replicated, or a sequence slice

    def forward(self, x):
        x = self.dropout(x)
        out = {}
        for t in self.targets:
            pair = getattr(self, t)
            out[t] = column_parallel_linear(F.linear(x, pair.lora_A), pair.lora_B)
        if self.qkv_layout is None:
            return out[self.targets[0]] * self.scale
        return _fill_qkv(out, self.qkv_layout) * self.scale


def _fill_qkv(out: Dict[str, torch.Tensor], layout: Tuple[int, int, int]) -> torch.Tensor:
    groups, per_group, d = layout
    first = next(iter(out.values()))
    lead = first.shape[:-1]
    parts = []
    for t, heads in (("q_proj", per_group), ("k_proj", 1), ("v_proj", 1)):
        y = out.get(t)
        parts.append(y.view(*lead, groups, heads, d) if y is not None else first.new_zeros(*lead, groups, heads, d))
    return torch.cat(parts, dim=-2).reshape(*lead, groups * (per_group + 2) * d)


class RowLora(nn.Module):
    """The adapter of a row-parallel layer: A split along the (tensor-parallel) inputs, the
    rank-r partial products summed over the ranks (reduce-scattered with sequence
    parallelism), then the replicated B."""

    def __init__(self, target: str, pair: LoraPair, scale: float, dropout: float):
        super().__init__()
        self.targets = [target]
        setattr(self, target, pair)
        self.scale, self.p = scale, dropout

    def forward(self, x):
        pair = getattr(self, self.targets[0])
        if self.training and self.p > 0:
            with tp_rng():  # each rank holds different input features: independent masks
                x = F.dropout(x, self.p, True)
        return F.linear(leave_tp_region(F.linear(x, pair.lora_A)), pair.lora_B) * self.scale


def _column_pair(rank: int, fan_in: int, out_full: int, seq_parallel: bool, replicas: int = 1,
                 kv_of=None) -> LoraPair:
    """A replicated, B split along its outputs (contiguous, or ``replicas`` ranks in a row
    sharing one key/value head's rows, like ``kv_of``, the fused QKV weight)."""
    s = state.get()
    pair = LoraPair((rank, fan_in), (out_full * replicas // s.tp_size, rank))
    mark(pair.lora_A, None, bound=1.0 / math.sqrt(fan_in))
    pair.lora_A.sequence_parallel = seq_parallel
    if replicas > 1:
        groups = s.tp_size // replicas
        index = s.tp_rank // replicas
        mark(pair.lora_B, None, tp_dim=0, full=[out_full, rank],
             shard_fn=lambda full: full.reshape(groups, -1, *full.shape[1:])[index])
        pair.lora_B.kv_rows, pair.lora_B.kv_group, pair.lora_B.kv_rank = 0, kv_of.kv_group, kv_of.kv_rank
        pair.lora_B.tp_replicas = replicas
    else:
        mark(pair.lora_B, None, tp_dim=0)
    return pair


def _row_pair(rank: int, fan_in: int, out: int, seq_parallel: bool) -> LoraPair:
    tp = state.get().tp_size
    pair = LoraPair((rank, fan_in // tp), (out, rank))
    mark(pair.lora_A, None, tp_dim=1, bound=1.0 / math.sqrt(fan_in))
    mark(pair.lora_B, None)
    pair.lora_B.sequence_parallel = seq_parallel
    return pair


def add_adapters(model, cfg: Config) -> None:
    """Give every transformer layer of ``model`` (a stage, or its chunks) the adapters
    --lora-target names and freeze every other parameter (but TRAINED_IN_FULL)."""
    m, lo, s = cfg.model, cfg.lora, state.get()
    r, sp, dropout = lo.lora_rank, s.sequence_parallel, lo.lora_dropout
    scale = lora_scale(lo.lora_alpha, r, lo.use_rslora)
    targets = lora_targets(cfg)
    h, d, nq, ng = m.hidden_size, m.kv_channels, m.num_attention_heads, m.num_query_groups
    for name, param in model.named_parameters():
        param.requires_grad_(name in TRAINED_IN_FULL)
    for chunk in model_chunks(model):
        for layer in chunk.layers.values():
            attn, mlp = layer.attention, layer.mlp
            replicas = max(s.tp_size // ng, 1)
            qkv = {}
            if "q_proj" in targets:
                qkv["q_proj"] = _column_pair(r, h, nq * d, sp)
            for t in ("k_proj", "v_proj"):
                if t in targets:
                    qkv[t] = _column_pair(r, h, ng * d, sp, replicas, attn.qkv.weight)
            if qkv:
                attn.qkv.adapter = ColumnLora(qkv, scale, dropout, (attn.groups, attn.heads // attn.groups, d))
            if "o_proj" in targets:
                attn.proj.adapter = RowLora("o_proj", _row_pair(r, nq * d, h, sp), scale, dropout)
            for t, layer_name in (("gate_proj", "gate"), ("up_proj", "fc1")):
                if t in targets:
                    getattr(mlp, layer_name).adapter = ColumnLora({t: _column_pair(r, h, m.ffn_hidden_size, sp)},
                                                                  scale, dropout)
            if "down_proj" in targets:
                mlp.fc2.adapter = RowLora("down_proj", _row_pair(r, m.ffn_hidden_size, h, sp), scale, dropout)


def peft_name(name: str) -> str:
    """Our adapter parameter name -> peft's key in adapter_model.safetensors."""
    match = ADAPTER_NAME.match(name)
    if match is None:
        raise ValueError(f"{name} is not a LoRA adapter parameter")
    layer, block, _, target, which = match.groups()
    return f"base_model.model.model.layers.{layer}.{HF_BLOCKS[block]}.{target}.lora_{which}.weight"


def adapter_name(layer: int, target: str, which: str) -> str:
    block, base = TARGET_LAYERS[target]
    return f"layers.{layer}.{block}.{base}.adapter.{target}.lora_{which}"


def adapter_parameters(model) -> Iterator[Tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if ADAPTER_NAME.match(n))


class ParameterSubset:
    """The trainable (adapters) or the frozen (base) parameters of a model, by their global
    names, with the model interface checkpoints use: state_dict, load_state_dict (exactly
    these names), named_parameters."""

    def __init__(self, model, trainable: bool):
        self.model, self.trainable = model, trainable

    def named_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad == self.trainable]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters()}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        names = {n for n, _ in self.named_parameters()}
        missing, unexpected = sorted(names - set(sd)), sorted(set(sd) - names)
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise RuntimeError(f"Error(s) in loading state_dict:\n\t{what} ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected)")
        self.model.load_state_dict(sd, strict=False)


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model for the duration: every adapter detached from its layer, then put back
    (how a LoRA run gets its DPO reference without a second copy of the weights)."""
    held = [(m, m.adapter) for m in model.modules() if getattr(m, "adapter", None) is not None]
    for m, _ in held:
        m.adapter = None
    try:
        yield
    finally:
        for m, adapter in held:
            m.adapter = adapter
