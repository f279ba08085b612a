"""Autograd-aware collectives that move activations in and out of tensor-parallel regions.

Each forward collective has the matching backward (copy <-> all-reduce, split <-> gather,
all-gather <-> reduce-scatter), so layers compose them like ordinary functions. The
``*_sequence`` ones split activations along the sequence (dim 0 of [seq, batch, hidden])
for sequence parallelism. With no tensor-parallel group they return their input unchanged.
"""

import torch
import torch.distributed as dist

from megalite.parallel import state


def _all_reduce(x, group):
    dist.all_reduce(x, group=group)
    return x


def _is_gloo(group) -> bool:
    return dist.get_backend(group) == "gloo"


def _split_first(x, group):
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    if x.shape[0] % size:
        raise ValueError(f"sequence length {x.shape[0]} is not divisible by the tensor-parallel size {size}")
    return x.chunk(size, dim=0)[rank].contiguous()


def all_gather_first_dim(x, group):
    x = x.contiguous()
    size = dist.get_world_size(group)
    if _is_gloo(group):  # gloo has no all_gather_into_tensor
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)
    out = torch.empty((size * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x, group=group)
    return out


def reduce_scatter_first_dim(x, group):
    if _is_gloo(group):  # gloo has no reduce_scatter: all-reduce and keep our chunk (same result)
        return _split_first(_all_reduce(x.contiguous().clone(), group), group)
    size = dist.get_world_size(group)
    out = torch.empty((x.shape[0] // size,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x.contiguous(), group=group)
    return out


def _split_last(x, group):
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    return x.chunk(size, dim=-1)[rank].contiguous()


def _gather_last(x, group):
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def _identity(x, group):
    return x


def _all_reduce_copy(x, group):
    return _all_reduce(x.clone(), group)


def _all_reduce_grad(g, group):
    return _all_reduce(g.contiguous(), group)


class _Mapping(torch.autograd.Function):
    """``forward(x, group)`` going forward and its counterpart ``backward(g, group)`` going back."""

    @staticmethod
    def forward(ctx, x, group, forward, backward):
        ctx.group, ctx.backward_fn = group, backward
        return forward(x, group)

    @staticmethod
    def backward(ctx, g):
        return ctx.backward_fn(g, ctx.group), None, None, None


def _over_tp(x, forward, backward):
    """Apply a mapping over the tensor-parallel group, if there is one."""
    g = state.get().tp_group
    return x if g is None else _Mapping.apply(x, g, forward, backward)


def copy_to_tp(x):
    """Identity forward; sums the input gradient over tensor-parallel ranks."""
    return _over_tp(x, _identity, _all_reduce_grad)


def reduce_from_tp(x):
    """Sums partial results over tensor-parallel ranks; identity backward."""
    return _over_tp(x, _all_reduce_copy, _identity)


def scatter_to_tp(x):
    """Keeps this rank's slice of the last dimension; gathers gradients back."""
    return _over_tp(x, _split_last, _gather_last)


def gather_from_tp(x):
    """Concatenates every rank's slice along the last dimension; splits gradients."""
    return _over_tp(x, _gather_last, _split_last)


def scatter_to_sequence(x):
    """Keeps this rank's slice of the sequence; gathers gradients back."""
    return _over_tp(x, _split_first, all_gather_first_dim)


def gather_from_sequence(x):
    """Whole sequence from every rank's slice; reduce-scatters the gradients, because the
    consumer (a column-parallel layer) leaves each rank with a partial input gradient."""
    return _over_tp(x, all_gather_first_dim, reduce_scatter_first_dim)


def gather_sequence_for_all(x):
    """Whole sequence from every rank's slice, for a consumer every rank computes in full (a
    reward model's scores, the same loss on each rank): the gradient is only split back."""
    return _over_tp(x, all_gather_first_dim, _split_first)


def reduce_scatter_to_sequence(x):
    """Sums partial results over ranks and keeps this rank's slice of the sequence."""
    return _over_tp(x, reduce_scatter_first_dim, all_gather_first_dim)


def leave_tp_region(x):
    """Output of a row-parallel layer: partial sums combined (and re-split with sequence parallelism)."""
    return reduce_scatter_to_sequence(x) if state.get().sequence_parallel else reduce_from_tp(x)
