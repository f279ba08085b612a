"""Data parallelism over one contiguous fp32 gradient buffer, reduced bucket by bucket.

Every parameter's gradient lives in ``param.main_grad``, a view into one flat fp32 buffer
laid out in reverse registration order (roughly the order backward produces gradients).
fp32 parameters accumulate straight into it (``param.grad`` *is* that view); lower-precision
parameters are added into it by a hook and their ``.grad`` freed, so gradient accumulation
always happens in fp32. The buffer is cut into buckets of about ``bucket_size`` elements;
on the last micro-batch of a step each bucket is all-reduced across the data-parallel group
as soon as its last gradient arrives, overlapping communication with the rest of backward.
The loss is normalised by the global token count, so gradients are summed, not averaged.
"""

from typing import List, Optional

import torch
import torch.distributed as dist


class _Bucket:
    def __init__(self, params: List[torch.nn.Parameter], view: torch.Tensor):
        self.params, self.view = params, view
        self.pending = set()
        self.handle = None


class GradBuffer:
    def __init__(self, params: List[torch.nn.Parameter], dp_group=None, bucket_size: int = 40_000_000,
                 overlap: bool = True):
        self.params = [p for p in params if p.requires_grad]
        self.dp_group = dp_group
        self.overlap = overlap and dp_group is not None
        device = self.params[0].device
        total = sum(p.numel() for p in self.params)
        self.buffer = torch.zeros(total, dtype=torch.float32, device=device)
        self.buckets: List[_Bucket] = []
        self._bucket_of = {}
        offset, start, members = 0, 0, []
        for p in reversed(self.params):
            n = p.numel()
            p.main_grad = self.buffer[offset : offset + n].view_as(p)
            offset += n
            members.append(p)
            if offset - start >= bucket_size:
                self._add_bucket(members, start, offset)
                start, members = offset, []
        if members:
            self._add_bucket(members, start, offset)
        self.sync_this_backward = True
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)
        self.zero()

    def _add_bucket(self, members, start, end):
        bucket = _Bucket(members, self.buffer[start:end])
        self.buckets.append(bucket)
        for p in members:
            self._bucket_of[p] = bucket

    def zero(self) -> None:
        """Start a new step: clear gradients; fp32 parameters accumulate in place from now on."""
        self.buffer.zero_()
        for p in self.params:
            p.grad = p.main_grad if p.dtype == torch.float32 else None
        for b in self.buckets:
            b.pending = set(b.params)
            b.handle = None

    def _on_grad_ready(self, p: torch.nn.Parameter) -> None:
        if p.grad is not p.main_grad:
            p.main_grad.add_(p.grad)
            p.grad = None
        if self.overlap and self.sync_this_backward:
            bucket = self._bucket_of[p]
            bucket.pending.discard(p)
            if not bucket.pending and bucket.handle is None:
                bucket.handle = dist.all_reduce(bucket.view, group=self.dp_group, async_op=True)

    def finish_sync(self) -> None:
        """Sum gradients over data-parallel ranks (after the step's last backward)."""
        if self.dp_group is None:
            return
        for b in self.buckets:
            if b.handle is None:
                b.handle = dist.all_reduce(b.view, group=self.dp_group, async_op=True)
        for b in self.buckets:
            b.handle.wait()
            b.handle = None

    def set_last_microbatch(self, last: bool) -> None:
        """Only the step's last backward launches the all-reduces (no communication before)."""
        self.sync_this_backward = last


def all_reduce_scalar(value: float, group: Optional[object], op=None, device=None) -> float:
    """Sum (or ``op``) a Python number over ``group``; identity without one."""
    if group is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return t.item()
