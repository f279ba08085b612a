"""Autograd-aware collectives that move activations in and out of tensor-parallel regions.

Each forward collective has the matching backward (copy <-> all-reduce, split <-> gather),
so layers compose them like ordinary functions. With no tensor-parallel group they return
their input unchanged.
"""

import torch
import torch.distributed as dist

from megalite.parallel import state


def _all_reduce(x, group):
    dist.all_reduce(x, group=group)
    return x


def _split_last(x, group):
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    return x.chunk(size, dim=-1)[rank].contiguous()


def _gather_last(x, group):
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g.contiguous(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, g):
        return _gather_last(g, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, g):
        return _split_last(g, ctx.group), None


def _tp_group():
    return state.get().tp_group


def copy_to_tp(x):
    """Identity forward; sums the input gradient over tensor-parallel ranks."""
    g = _tp_group()
    return x if g is None else _CopyToTP.apply(x, g)


def reduce_from_tp(x):
    """Sums partial results over tensor-parallel ranks; identity backward."""
    g = _tp_group()
    return x if g is None else _ReduceFromTP.apply(x, g)


def scatter_to_tp(x):
    """Keeps this rank's slice of the last dimension; gathers gradients back."""
    g = _tp_group()
    return x if g is None else _ScatterToTP.apply(x, g)


def gather_from_tp(x):
    """Concatenates every rank's slice along the last dimension; splits gradients."""
    g = _tp_group()
    return x if g is None else _GatherFromTP.apply(x, g)
