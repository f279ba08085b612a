"""ZeRO-3: parameters sharded over the data-parallel ranks, gathered one unit at a time
(and ZeRO-2, the same with whole parameters kept on every rank).

A *unit* is a transformer layer, or the parameters a model chunk holds outside its layers
(embedding, final norm, output layer). Each unit is one bucket of the layout GradBuffer
uses, so every rank keeps only its 1/DP share of the unit's parameters (``param_shard``)
and fp32 gradients (``grad_shard``); the optimizer updates those shares in place.

The unit's whole parameters live in one flat tensor whose storage exists only while needed:
it is gathered before the unit's forward (the next unit's gather is started at the same
time, so communication overlaps compute) and freed after it; gathered again when backward
reaches the unit (detected by a hook on the unit's output gradient, which also prefetches
the unit before it) and freed once all its gradients have arrived. Parameters stay views of
that tensor throughout, so tensors autograd saved during forward see the re-gathered values
in backward. A unit's gradients are summed over the model-parallel ranks that need it,
reduce-scattered into the owners' fp32 shards, and the full-size copy dropped, on every
micro-batch: gradients never exist whole for more than a couple of units at a time.
"""

import contextlib
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megalite.parallel.data_parallel import GradBuffer, _Bucket, unit_params


def unit_layout(roots: Sequence[torch.nn.Module], units: Sequence[torch.nn.Module]) -> Tuple[List[int], List[int]]:
    """(numels in buffer order, indices that close a bucket): FullyShardedBuffer's layout input,
    for memory planning without building the buffer."""
    groups = [params for _, params in unit_params(roots, units)]
    order = list(reversed([p for g in groups for p in g]))
    firsts = {id(g[0]) for g in groups}
    return [p.numel() for p in order], [i for i, p in enumerate(order) if id(p) in firsts]


class FullyShardedBuffer(GradBuffer):
    def __init__(self, roots: Sequence[torch.nn.Module], units: Sequence[torch.nn.Module], dp_group,
                 sync_model_parallel: Optional[Callable[[List[torch.nn.Parameter]], None]] = None,
                 shard_params: bool = True):
        """``shard_params=False`` is ZeRO-2: gradients and optimizer state sharded as here, but
        every rank keeps whole parameters, all-gathered from the updated shards after each step."""
        self.shard_params = shard_params
        owned_by = unit_params(roots, units)
        groups = [params for _, params in owned_by]
        # buffer order is reversed registration order: a bucket ends at each group's first parameter
        super().__init__([p for g in groups for p in g], dp_group, bucket_size=2**62, distributed=True,
                         sync_model_parallel=sync_model_parallel, bucket_ends=[g[0] for g in groups])
        self.forward_order: List[_Bucket] = []
        self._inflight: List = []
        self.layer_buckets = {self._bucket_of[next(u.parameters())] for u in units}
        if shard_params:
            for module, params in owned_by:
                b = self._bucket_of[params[0]]
                module.register_forward_pre_hook(lambda m, args, b=b: self._before_forward(b))
                module.register_forward_hook(lambda m, args, out, b=b: self._after_forward(b, out))

    # -- storage ---------------------------------------------------------------------------------
    def _allocate(self, total: int) -> None:
        for b in self.buckets:
            device, dtype = b.params[0].device, b.params[0].dtype
            b.full = torch.zeros(b.end - b.start, dtype=dtype, device=device)
            for p in b.params:
                offset = self.offset[p] - b.start
                view = b.full[offset : offset + p.numel()].view_as(p)
                view.copy_(p.data)
                p.data = view
            mine = b.full[b.owned[0] - b.start : b.owned[1] - b.start]
            b.param_shard = mine.clone() if self.shard_params else mine  # ZeRO-2: whole parameters stay
            b.grad_shard = torch.zeros(b.owned[1] - b.owned[0], dtype=torch.float32, device=device)
            b.grad_full = None
            b.gathered = True
            self._release(b)

    def _gather(self, b: _Bucket) -> None:
        """Start gathering ``b``'s parameters (no-op if already there or on the way)."""
        if b.gathered:
            return
        b.full.untyped_storage().resize_(b.full.numel() * b.full.element_size())
        if self.in_place:
            b.param_handle = dist.all_gather_into_tensor(b.full, b.param_shard, group=self.dp_group, async_op=True)
        else:
            b.param_handle = dist.all_gather(list(b.full.chunk(self.dp_size)), b.param_shard.clone(),
                                             group=self.dp_group, async_op=True)
        b.gathered = True

    def _ready(self, b: _Bucket) -> None:
        self._gather(b)
        if b.param_handle is not None:
            b.param_handle.wait()
            b.param_handle = None

    def _release(self, b: _Bucket) -> None:
        if b.gathered and self.shard_params:
            self._ready(b)
            b.full.untyped_storage().resize_(0)
            b.gathered = False

    # -- hooks (see __init__) ----------------------------------------------------------------------
    def _before_forward(self, b: _Bucket) -> None:
        if _in_backward():  # recomputation: backward reached the unit, which must stay until its grads are in
            self._ready(b)
            return
        if b not in self.forward_order:
            self.forward_order.append(b)
        self._ready(b)
        self._prefetch(b, +1)

    def _after_forward(self, b: _Bucket, out) -> None:
        """Free the unit (a chunk's own parameters after the whole chunk); re-gather it when
        backward reaches its output."""
        if _in_backward():
            return  # recomputation: backward needs the unit next
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad, b=b: self._before_backward(b))
        self._release(b)

    def _before_backward(self, b: _Bucket) -> None:
        self._ready(b)
        self._prefetch(b, -1)

    def _prefetch(self, b: _Bucket, step: int) -> None:
        """Start gathering the unit after ``b`` in forward order (before it, in backward). Only
        layers are prefetched in backward: a chunk's own unit has done its backward part at
        the output end already, or is still gathered for the embedding's."""
        if b in self.forward_order:
            i = self.forward_order.index(b) + step
            if 0 <= i < len(self.forward_order) and (step > 0 or self.forward_order[i] in self.layer_buckets):
                self._gather(self.forward_order[i])

    # -- gradients -------------------------------------------------------------------------------
    def zero(self) -> None:
        for b in self.buckets:
            b.grad_shard.zero_()
            b.pending = set(b.params)
        for p in self.params:
            p.grad = None

    def _on_grad_ready(self, p: torch.nn.Parameter) -> None:
        b = self._bucket_of[p]
        if b.grad_full is None:
            b.grad_full = torch.zeros(b.end - b.start, dtype=torch.float32, device=b.grad_shard.device)
            for q in b.params:
                offset = self.offset[q] - b.start
                q.main_grad = b.grad_full[offset : offset + q.numel()].view_as(q)
        p.main_grad.add_(p.grad)
        p.grad = None
        b.pending.discard(p)
        if not b.pending:
            self._reduce_unit(b)
            b.pending = set(b.params)

    def _reduce_unit(self, b: _Bucket) -> None:
        """Sum the unit's gradient over model-parallel and data-parallel ranks into the
        owners' shards; free the unit's parameters and full-size gradient."""
        self.sync_model_parallel(b.params)
        full, b.grad_full = b.grad_full, None
        for q in b.params:
            q.main_grad = None
        part = full[b.owned[0] - b.start : b.owned[1] - b.start]
        if self.in_place:
            handle = dist.reduce_scatter_tensor(part, full, group=self.dp_group, async_op=True)
        else:
            handle = dist.all_reduce(full, group=self.dp_group, async_op=True)
        self._inflight.append((handle, b, part, full))
        while len(self._inflight) > 2:  # bound the full-size gradients alive at once
            self._land(self._inflight.pop(0))
        self._release(b)

    @staticmethod
    def _land(item) -> None:
        handle, b, part, _ = item
        handle.wait()
        b.grad_shard.add_(part)

    def finish_sync(self) -> None:
        while self._inflight:
            self._land(self._inflight.pop(0))
        for b in self.buckets:  # nothing may stay gathered into the optimizer step: it changes the shards
            self._release(b)

    # -- what the optimizer and checkpoints see ---------------------------------------------------
    def param_view(self, p: torch.nn.Parameter, lo: int, hi: int) -> torch.Tensor:
        b = self._bucket_of[p]
        start = self.offset[p] + lo - b.owned[0]
        return b.param_shard[start : start + hi - lo]

    def grad_view(self, p: torch.nn.Parameter, lo: int, hi: int) -> torch.Tensor:
        b = self._bucket_of[p]
        start = self.offset[p] + lo - b.owned[0]
        return b.grad_shard[start : start + hi - lo]

    def gather_params(self) -> None:
        """ZeRO-3: nothing to do, units are gathered from the updated shards on use. ZeRO-2:
        every unit's whole parameters from the owners' updated shards."""
        if not self.shard_params:
            for b in self.buckets:  # launch every gather, then wait
                b.gathered = False
                self._gather(b)
            for b in self.buckets:
                self._ready(b)

    def wait_params(self, buckets=None) -> None:
        """Nothing outstanding between steps."""

    @contextlib.contextmanager
    def full_params(self, write_back: bool = False):
        for b in self.buckets:
            self._ready(b)
        try:
            yield
            if write_back:
                for b in self.buckets:
                    b.param_shard.copy_(b.full[b.owned[0] - b.start : b.owned[1] - b.start])
        finally:
            for b in self.buckets:
                self._release(b)


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1
