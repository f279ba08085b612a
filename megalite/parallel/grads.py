"""Gradient bookkeeping across tensor-parallel ranks: sequence-parallel sums and the global norm."""

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from megalite.parallel import state


def sync_sequence_parallel_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum, over tensor-parallel ranks, the gradients of replicated parameters that each
    rank applied to its own slice of the sequence (norms, row-parallel biases)."""
    s = state.get()
    grads = [p.main_grad for p in params if getattr(p, "sequence_parallel", False)]
    if s.tp_group is None or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=s.tp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def global_grad_norm(grads: List[torch.Tensor], replicated: List[bool], group: Optional[object] = None) -> float:
    """L2 norm of the whole model's gradient (inf/nan if any entry is).

    Sharded gradients are summed over ``group`` (the model-parallel ranks); a gradient
    replicated on every tensor-parallel rank is counted once, from tensor-parallel rank 0.
    """
    s = state.get()
    keep = [g for g, rep in zip(grads, replicated) if not rep or s.tp_rank == 0]
    sq = torch.stack(torch._foreach_norm(keep)).float().square().sum() if keep else torch.zeros(())
    if group is not None:
        dist.all_reduce(sq, group=group)
    return sq.sqrt().item()
