"""Linear and embedding layers split over tensor-parallel ranks (Megatron's three layers).

ColumnParallelLinear splits the output features, RowParallelLinear the input features,
VocabParallelEmbedding the vocabulary. With sequence parallelism the column-parallel input
is all-gathered along the sequence and the row-parallel output reduce-scattered, instead of
copied and all-reduced. With one tensor-parallel rank they are an ordinary nn.Linear /
nn.Embedding. Parameters replicated on every tensor-parallel rank that see only a slice of
the sequence are flagged ``sequence_parallel``: their gradients are summed over the ranks.
Both linear layers may carry an ``adapter`` (e.g. LoRA, megalite.posttrain.lora): a module
called with the layer's (local) input whose output is added to the layer's output.
"""

import torch
import torch.nn.functional as F
from torch import nn

from megalite.parallel import state
from megalite.parallel.init import mark
from megalite.parallel.mappings import (
    all_gather_first_dim,
    copy_to_tp,
    gather_from_tp,
    leave_tp_region,
    reduce_from_tp,
    reduce_scatter_first_dim,
    scatter_to_tp,
)


class _SequenceGatherLinear(torch.autograd.Function):
    """y = all_gather_seq(x) W^T + b that keeps only this rank's slice of x for backward
    (gathering it again there), so sequence parallelism really cuts activation memory by TP."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(all_gather_first_dim(x, group), weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        grad_x = reduce_scatter_first_dim(g.matmul(weight), ctx.group)
        g2 = g.reshape(-1, g.shape[-1])
        grad_w = None
        if ctx.needs_input_grad[1]:  # not for a frozen weight (LoRA's base)
            total = all_gather_first_dim(x, ctx.group)
            grad_w = g2.t().matmul(total.reshape(-1, total.shape[-1]))
        grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def column_parallel_linear(x, weight, bias=None):
    """The matmul of a column-parallel layer: the input enters the tensor-parallel region
    (copied, or all-gathered along the sequence with sequence parallelism)."""
    s = state.get()
    if s.sequence_parallel:
        return _SequenceGatherLinear.apply(x, weight, bias, s.tp_group)
    return F.linear(copy_to_tp(x), weight, bias)


def _divide(n: int, k: int, what: str) -> int:
    if n % k:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size ({k})")
    return n // k


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's rows (output features) split across ranks."""

    def __init__(self, in_features, out_features, bias=True, gather_output=False, init_std=0.02):
        super().__init__()
        tp = state.get().tp_size
        self.gather_output = gather_output
        self.weight = mark(nn.Parameter(torch.empty(_divide(out_features, tp, "output features"), in_features)),
                           init_std, tp_dim=0)
        self.bias = None
        if bias:
            self.bias = mark(nn.Parameter(torch.empty(self.weight.shape[0])), None, tp_dim=0)
        self.adapter = None

    def forward(self, x):
        y = column_parallel_linear(x, self.weight, self.bias)
        if self.adapter is not None:
            y = y + self.adapter(x)
        return gather_from_tp(y) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's columns (input features) split; partial sums are all-reduced."""

    def __init__(self, in_features, out_features, bias=True, input_is_parallel=True, init_std=0.02):
        super().__init__()
        tp = state.get().tp_size
        self.input_is_parallel = input_is_parallel
        self.weight = mark(nn.Parameter(torch.empty(out_features, _divide(in_features, tp, "input features"))),
                           init_std, tp_dim=1)
        self.bias = mark(nn.Parameter(torch.empty(out_features)), None) if bias else None
        if self.bias is not None:
            self.bias.sequence_parallel = state.get().sequence_parallel
        self.adapter = None

    def forward(self, x):
        if not self.input_is_parallel:
            x = scatter_to_tp(x)
        y = leave_tp_region(F.linear(x, self.weight))
        if self.adapter is not None:
            y = y + self.adapter(x)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary rows are split; each rank looks up the ids it owns."""

    def __init__(self, num_embeddings, embedding_dim, init_std=0.02):
        super().__init__()
        s = state.get()
        per_rank = _divide(num_embeddings, s.tp_size, "vocabulary size")
        self.vocab_start, self.vocab_end = s.tp_rank * per_rank, (s.tp_rank + 1) * per_rank
        self.weight = mark(nn.Parameter(torch.empty(per_rank, embedding_dim)), init_std, tp_dim=0)

    def forward(self, ids):
        if state.get().tp_size == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out)
