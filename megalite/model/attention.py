"""Causal self-attention with fused QKV, grouped-query heads, optional RoPE, optional
per-head query/key norms (``--qk-layernorm``, Qwen3) and an optional sliding window (each
query sees itself and the ``window`` keys before it; ``--window-size``, per layer).

The fused QKV weight is laid out group by group, [q heads of group 0, k0, v0, q heads of
group 1, k1, v1, ...], so a contiguous split of its rows gives each tensor-parallel rank
whole groups. With more tensor-parallel ranks than key/value heads, each rank keeps its
query heads plus a copy of the one key/value head they share, whose gradient is summed
over the ranks holding it. The query/key norms are shared by every head, so each rank's
gradient for them covers only its own heads and is summed over the tensor-parallel ranks.
Activations are [seq, batch, hidden] throughout, as in Megatron. With context parallelism
the rank's chunks of the sequence attend to the whole of it through ring attention
(megalite.parallel.context).
"""

import math
from typing import Optional

import torch
from torch import nn

from megalite import kernels
from megalite.config import ModelConfig
from megalite.model.norms import build_norm
from megalite.parallel import state
from megalite.parallel.context import ring_attention
from megalite.parallel.init import mark
from megalite.parallel.layers import ColumnParallelLinear, RowParallelLinear
from megalite.parallel.random import recompute, tp_rng


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, recompute_core: bool = False, window: Optional[int] = None):
        super().__init__()
        self.window = window
        tp = state.get().tp_size
        self.head_dim = cfg.kv_channels
        self.heads = cfg.num_attention_heads // tp
        replicas = max(tp // cfg.num_query_groups, 1)  # ranks sharing one key/value head
        self.groups = max(cfg.num_query_groups // tp, 1)
        self.dropout = cfg.attention_dropout
        self.backend = cfg.attention_backend
        self.recompute_core = recompute_core
        qkv_out = (self.heads + 2 * self.groups) * self.head_dim * tp
        self.qkv = ColumnParallelLinear(cfg.hidden_size, qkv_out, bias=cfg.add_bias_linear or cfg.add_qkv_bias,
                                        init_std=cfg.init_method_std)
        if replicas > 1:
            _replicate_kv_head(self.qkv, cfg, replicas)
        self.q_norm = self.k_norm = None
        if cfg.qk_layernorm:
            self.q_norm = build_norm(cfg, self.head_dim)
            self.k_norm = build_norm(cfg, self.head_dim)
            for p in (*self.q_norm.parameters(), *self.k_norm.parameters()):
                p.sequence_parallel = tp > 1  # this rank's heads only: summed over the ranks
        self.proj = RowParallelLinear(cfg.num_attention_heads * self.head_dim, cfg.hidden_size,
                                      bias=cfg.add_bias_linear,
                                      init_std=cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers))

    def forward(self, x, rope=None, cache=None, cu_seqlens=None, shared=None):
        qkv = self.qkv(x)  # the whole sequence, even when x is a sequence-parallel slice
        s, b = qkv.shape[:2]
        q_per_group = self.heads // self.groups
        qkv = qkv.view(s, b, self.groups, q_per_group + 2, self.head_dim)
        q = qkv[:, :, :, :q_per_group].reshape(s, b, self.heads, self.head_dim)
        k, v = qkv[:, :, :, q_per_group], qkv[:, :, :, q_per_group + 1]
        if self.recompute_core and self.training:
            out = recompute(self._core, q, k, v, rope, None, cu_seqlens, shared)
        else:
            out = self._core(q, k, v, rope, cache, cu_seqlens, shared)
        return self.proj(out)

    def _core(self, q, k, v, rope, cache=None, cu_seqlens=None, shared=None):
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = kernels.rotary_qk(q, k, *rope)
        if shared is not None:  # compact tokens -> their rows, each follower reading its prefix from its leader
            q, k, v = (shared.expand(t) for t in (q, k, v))
        mask = None
        if cache is not None:  # incremental decoding: attend to everything cached, as the mask allows
            k, v = cache.update(k, v)
            mask = cache.mask
        dropout = self.dropout if self.training else 0.0
        with tp_rng(dropout > 0):  # each rank's heads (and, under CP, queries) are its own: independent masks
            if state.get().cp_size > 1 and cache is None:  # a split sequence: ring attention (cu_seqlens: doc starts)
                out = ring_attention(q, k, v, cu_seqlens, self.window, dropout)
            else:
                out = kernels.attention(q, k, v, self.backend, cu_seqlens, dropout_p=dropout, mask=mask,
                                        window=self.window)
        out = out.reshape(*out.shape[:2], self.heads * self.head_dim)
        return shared.compact(out) if shared is not None else out


def _replicate_kv_head(qkv: ColumnParallelLinear, cfg: ModelConfig, replicas: int) -> None:
    """Make ``qkv`` hold this rank's query heads and a copy of their shared key/value head."""
    s = state.get()
    d, nq, ng = cfg.kv_channels, cfg.num_attention_heads, cfg.num_query_groups
    per_group, mine = nq // ng, nq // s.tp_size
    group_index, first_q = s.tp_rank // replicas, (s.tp_rank % replicas) * mine
    kv_group, kv_rank = state.tp_subgroup(replicas)

    def shard(full):
        rows = full.reshape(ng, per_group + 2, d, *full.shape[1:])[group_index]
        keep = torch.cat([rows[first_q : first_q + mine], rows[per_group:]])
        return keep.reshape(-1, *full.shape[1:])

    for p in (qkv.weight, qkv.bias):
        if p is None:
            continue
        mark(p, p.init_std, p.init_fill, tp_dim=0, full=[(nq + 2 * ng) * d, *p.shape[1:]], shard_fn=shard)
        p.kv_rows, p.kv_group, p.kv_rank, p.kv_replicas = mine * d, kv_group, kv_rank, replicas
