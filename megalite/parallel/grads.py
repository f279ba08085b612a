"""Gradient bookkeeping across tensor-parallel ranks: sequence-parallel sums and the global norm."""

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megalite.parallel import state


def _all_reduce_together(grads: List[torch.Tensor], group) -> None:
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sync_tensor_parallel_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradient parts that several tensor-parallel ranks each computed only in part:
    replicated parameters applied to one slice of the sequence (norms, row-parallel biases
    under sequence parallelism) and copies of a shared key/value head."""
    s = state.get()
    if s.tp_group is None:
        return
    _all_reduce_together([p.main_grad for p in params if getattr(p, "sequence_parallel", False)], s.tp_group)
    kv = [p for p in params if getattr(p, "kv_group", None) is not None]
    if kv:
        _all_reduce_together([p.main_grad[p.kv_rows :] for p in kv], kv[0].kv_group)


def sync_embedding_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of a tied embedding held by both the first and the last pipeline
    stage, so both copies take the same step and stay equal."""
    s = state.get()
    shared = [p.main_grad for p in params if getattr(p, "shared_embedding", False)]
    if s.embedding_group is not None and shared:
        _all_reduce_together(shared, s.embedding_group)


def counted_ranges(params: Sequence[torch.nn.Parameter]) -> List[Tuple[torch.nn.Parameter, int, int]]:
    """The flat element ranges (param, start, end) of gradients this rank contributes to the
    global norm, so that every element of the model's gradient is counted exactly once across
    the model-parallel ranks."""
    s = state.get()
    out = []
    for p in params:
        if getattr(p, "shared_embedding", False) and not s.is_first_stage:
            continue  # the first stage's copy counts
        if getattr(p, "kv_group", None) is not None:
            split = p.kv_rows * math.prod(p.shape[1:])  # the rows of this rank's own query heads
            out.append((p, 0, split))
            if p.kv_rank == 0:
                out.append((p, split, p.numel()))
        elif getattr(p, "tp_dim", None) is not None or s.tp_rank == 0:
            out.append((p, 0, p.numel()))
    return out


def global_grad_norm(grads: List[torch.Tensor], groups: Sequence[Optional[object]] = (),
                     device: Optional[torch.device] = None) -> float:
    """L2 norm of the whole model's gradient from the parts this rank counts (``counted_ranges``,
    or their owned parts under the distributed optimizer), summed over ``groups``
    (model-parallel ranks, and data-parallel ranks when each holds a different part); inf/nan
    if any entry is. ``device``: where a rank that counts nothing keeps its zero (NCCL needs CUDA)."""
    sq = torch.stack(torch._foreach_norm(grads)).float().square().sum() if grads else torch.zeros((), device=device)
    for group in groups:
        if group is not None:
            dist.all_reduce(sq, group=group)
    return sq.sqrt().item()
