"""Data parallelism over contiguous parameter and gradient buffers, synced bucket by bucket.

Every parameter is a view into one flat buffer of the model's dtype, and its gradient
lives in ``param.main_grad``, a view into one flat fp32 buffer with the same layout
(reverse registration order, roughly the order backward produces gradients). fp32
parameters accumulate straight into it (``param.grad`` *is* that view); lower-precision
parameters are added into it by a hook and their ``.grad`` freed, so gradient accumulation
always happens in fp32. The buffers are cut into buckets of about ``bucket_size`` elements;
on the last micro-batch of a step each bucket's gradients are reduced across the
data-parallel group as soon as its last gradient arrives, overlapping communication with
the rest of backward. The loss is normalised by the global token count, so gradients are
summed, not averaged.

With ``distributed=True`` (ZeRO-1, Megatron's ``--use-distributed-optimizer``) each bucket
is padded to a multiple of the data-parallel size and every rank owns one contiguous
1/DP of it: gradients are reduce-scattered (each rank receives the sum of its own part),
the optimizer updates only the owned parts, and ``gather_params`` all-gathers the updated
parameters, optionally deferred until the forward pass first needs each bucket.
"""

import contextlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


def bucket_layout(numels: Sequence[int], bucket_size: int, dp_size: int = 1, distributed: bool = False,
                  ends: Sequence[int] = ()) -> List[Tuple[int, int, List[int]]]:
    """Buckets over parameters of ``numels`` (in buffer order): (start, end, member indices).
    A bucket closes once it holds ``bucket_size`` elements or after a parameter index in
    ``ends``. Distributed buckets are padded so that ``end - start`` divides by ``dp_size``.
    One function for the real buffers and for memory planning (bench/bench_zero.py)."""
    out, start, offset, members, ends = [], 0, 0, [], set(ends)
    for i, n in enumerate(numels):
        offset += n
        members.append(i)
        if offset - start >= bucket_size or i in ends or i == len(numels) - 1:
            if distributed:
                offset += -(offset - start) % dp_size
            out.append((start, offset, members))
            start, members = offset, []
    return out


class _Bucket:
    def __init__(self, params: List[torch.nn.Parameter], start: int, end: int, owned: Tuple[int, int]):
        self.params, self.start, self.end, self.owned = params, start, end, owned
        # A tied embedding split over pipeline stages has its gradient summed across the two
        # stages afterwards; the stages own different ranges of it, so it needs the whole sum.
        self.reduce_whole = any(getattr(p, "shared_embedding", False) for p in params)
        self.pending = set()
        self.grad_handle = None
        self.param_handle = None


class GradBuffer:
    def __init__(self, params: List[torch.nn.Parameter], dp_group=None, bucket_size: int = 40_000_000,
                 overlap: bool = True, distributed: bool = False, overlap_param_gather: bool = False,
                 sync_model_parallel: Optional[Callable[[List[torch.nn.Parameter]], None]] = None,
                 bucket_ends: Sequence[torch.nn.Parameter] = (), reduce_dtype: torch.dtype = torch.float32):
        self.params = [p for p in params if p.requires_grad]
        self.dp_group = dp_group
        self.dp_size = dist.get_world_size(dp_group) if dp_group is not None else 1
        self.dp_rank = dist.get_rank(dp_group) if dp_group is not None else 0
        self.distributed = distributed and dp_group is not None
        self.overlap = overlap and dp_group is not None
        self.overlap_param_gather = overlap_param_gather and self.distributed
        self.in_place = self.distributed and _has_in_place_collectives(dp_group)
        self.sync_model_parallel = sync_model_parallel or (lambda params: None)
        self.reduce_dtype = reduce_dtype  # bf16: Megatron's --grad-reduce-in-bf16
        order = list(reversed(self.params))
        closing = {id(p) for p in bucket_ends}
        ends = {i for i, p in enumerate(order) if id(p) in closing}
        layout = bucket_layout([p.numel() for p in order], bucket_size, self.dp_size, self.distributed, ends)
        self.buckets: List[_Bucket] = []
        self._bucket_of: Dict[torch.nn.Parameter, _Bucket] = {}
        self.offset: Dict[torch.nn.Parameter, int] = {}
        for start, end, members in layout:
            share = (end - start) // self.dp_size if self.distributed else end - start
            owned = (start + self.dp_rank * share, start + (self.dp_rank + 1) * share) if self.distributed \
                else (start, end)
            offset = start
            for i in members:
                self.offset[order[i]] = offset
                offset += order[i].numel()
            bucket = _Bucket([order[i] for i in members], start, end, owned)
            self.buckets.append(bucket)
            for i in members:
                self._bucket_of[order[i]] = bucket
        self._allocate(layout[-1][1] if layout else 0)
        self.sync_this_backward = True
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)
        self.zero()

    def _allocate(self, total: int) -> None:
        """One flat parameter buffer and one fp32 gradient buffer; parameters become views."""
        device, dtype = self.params[0].device, self.params[0].dtype
        self.buffer = torch.zeros(total, dtype=torch.float32, device=device)
        self.param_buffer = torch.zeros(total, dtype=dtype, device=device)
        for p, offset in self.offset.items():
            view = self.param_buffer[offset : offset + p.numel()].view_as(p)
            view.copy_(p.data)
            p.data = view
            p.main_grad = self.buffer[offset : offset + p.numel()].view_as(p)

    # -- gradients -----------------------------------------------------------------------------
    def zero(self) -> None:
        """Start a new step: clear gradients; fp32 parameters accumulate in place from now on."""
        self.buffer.zero_()
        for p in self.params:
            p.grad = p.main_grad if p.dtype == torch.float32 else None
        for b in self.buckets:
            b.pending = set(b.params)
            b.grad_handle = None

    def _on_grad_ready(self, p: torch.nn.Parameter) -> None:
        if p.grad is not p.main_grad:
            p.main_grad.add_(p.grad)
            p.grad = None
        if self.overlap and self.sync_this_backward:
            bucket = self._bucket_of[p]
            bucket.pending.discard(p)
            if not bucket.pending and bucket.grad_handle is None:
                bucket.grad_handle = self._reduce(bucket)

    def _reduce(self, b: _Bucket):
        grads = self.buffer[b.start : b.end]
        scatter = self.in_place and not b.reduce_whole  # this rank's part of the bucket receives everyone's sum
        out = self.buffer[b.owned[0] : b.owned[1]] if scatter else grads
        if self.reduce_dtype != grads.dtype:
            return _CastBack(out, grads.to(self.reduce_dtype), scatter, self.dp_group)
        if scatter:
            return dist.reduce_scatter_tensor(out, grads, group=self.dp_group, async_op=True)
        return dist.all_reduce(grads, group=self.dp_group, async_op=True)

    def finish_sync(self) -> None:
        """Sum gradients over data-parallel ranks (after the step's last backward; with the
        distributed optimizer only each rank's owned part is guaranteed summed), then over
        the model-parallel ranks that each computed only part of some gradients."""
        if self.dp_group is not None:
            for b in self.buckets:
                if b.grad_handle is None:
                    b.grad_handle = self._reduce(b)
            for b in self.buckets:
                b.grad_handle.wait()
                b.grad_handle = None
        self.sync_model_parallel(self.params)

    def set_last_microbatch(self, last: bool) -> None:
        """Only the step's last backward launches the reductions (no communication before)."""
        self.sync_this_backward = last

    # -- ownership (distributed optimizer) -------------------------------------------------------
    def owned_range(self, p: torch.nn.Parameter) -> Optional[Tuple[int, int]]:
        """The flat element range of ``p`` this rank updates (all of it without sharding)."""
        lo, hi = self._bucket_of[p].owned
        start = self.offset[p]
        lo, hi = max(lo, start) - start, min(hi, start + p.numel()) - start
        return (lo, hi) if lo < hi else None

    def param_view(self, p: torch.nn.Parameter, lo: int, hi: int) -> torch.Tensor:
        """Where the optimizer writes elements [lo, hi) of ``p`` (which this rank owns)."""
        return p.data.view(-1)[lo:hi]

    def grad_view(self, p: torch.nn.Parameter, lo: int, hi: int) -> torch.Tensor:
        """The reduced gradient of elements [lo, hi) of ``p`` (which this rank owns)."""
        return p.main_grad.view(-1)[lo:hi]

    def owned_grads(self, ranges: Sequence[Tuple[torch.nn.Parameter, int, int]]) -> List[torch.Tensor]:
        """The gradients of the parts of flat ranges (param, start, end) that this rank owns."""
        out = []
        for p, lo, hi in ranges:
            owned = self.owned_range(p)
            if owned is not None and max(lo, owned[0]) < min(hi, owned[1]):
                out.append(self.grad_view(p, max(lo, owned[0]), min(hi, owned[1])))
        return out

    @contextlib.contextmanager
    def full_params(self, write_back: bool = False):
        """Every parameter whole while the block runs (to save or load a checkpoint). They
        always are here; ZeRO-3 gathers them and, with ``write_back``, keeps what was loaded."""
        yield

    # -- parameters (distributed optimizer) ------------------------------------------------------
    def gather_params(self) -> None:
        """Give every rank the parameters each owner just updated; waited for at once, or with
        ``overlap_param_gather`` just before the forward pass first uses each bucket."""
        if not self.distributed:
            return
        for b in reversed(self.buckets):  # forward order: the embedding's bucket is the buffer's last
            full = self.param_buffer[b.start : b.end]
            mine = self.param_buffer[b.owned[0] : b.owned[1]]
            if self.in_place:
                b.param_handle = dist.all_gather_into_tensor(full, mine, group=self.dp_group, async_op=True)
            else:
                b.param_handle = dist.all_gather(list(full.chunk(self.dp_size)), mine.clone(), group=self.dp_group,
                                                 async_op=True)
        if not self.overlap_param_gather:
            self.wait_params()

    def wait_params(self, buckets: Optional[Sequence[_Bucket]] = None) -> None:
        for b in self.buckets if buckets is None else buckets:
            if b.param_handle is not None:
                b.param_handle.wait()
                b.param_handle = None

    def attach_param_waits(self, roots: Sequence[torch.nn.Module], units: Sequence[torch.nn.Module]) -> None:
        """With ``overlap_param_gather``: before each unit's forward (a transformer layer, or a
        model chunk for its embedding / final norm / output layer) wait for the gathers of the
        buckets holding its own parameters, so later layers' gathers overlap earlier layers'
        compute."""
        if not self.overlap_param_gather:
            return
        for module, params in unit_params(roots, units):
            buckets = tuple({self._bucket_of[p] for p in params})
            module.register_forward_pre_hook(lambda m, args, bs=buckets: self.wait_params(bs))


class _CastBack:
    """A reduction in a lower precision (``low``, a copy of the gradients) whose result is copied
    back into the fp32 gradients ``out`` when waited for."""

    def __init__(self, out: torch.Tensor, low: torch.Tensor, scatter: bool, group):
        self.out, self.low = out, low
        if scatter:
            self.result = torch.empty(out.numel(), dtype=low.dtype, device=low.device)
            self.handle = dist.reduce_scatter_tensor(self.result, low, group=group, async_op=True)
        else:
            self.result = low
            self.handle = dist.all_reduce(low, group=group, async_op=True)

    def wait(self) -> None:
        self.handle.wait()
        self.out.copy_(self.result)


def unit_params(roots: Sequence[torch.nn.Module], units: Sequence[torch.nn.Module]
                ) -> List[Tuple[torch.nn.Module, List[torch.nn.Parameter]]]:
    """The units parameters are gathered by: each layer in ``units`` with its parameters, then
    each model chunk in ``roots`` with the parameters it holds outside those layers (none for
    a middle pipeline stage, which is then left out)."""
    in_units = {p for u in units for p in u.parameters()}
    out = [(u, list(u.parameters())) for u in units]
    out += [(r, [p for p in r.parameters() if p not in in_units]) for r in roots]
    return [(m, ps) for m, ps in out if ps]


def _has_in_place_collectives(group) -> bool:
    """Whether ``group`` runs reduce_scatter_tensor / all_gather_into_tensor (NCCL does; gloo
    only in recent torch). Without them the distributed optimizer all-reduces whole buckets
    and gathers through a list: more traffic, the same result."""
    if dist.get_backend(group) == "nccl":
        return True
    try:
        dist.reduce_scatter_tensor(torch.zeros(1), torch.zeros(dist.get_world_size(group)), group=group)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def all_reduce_scalar(value: float, group: Optional[object], op=None, device=None) -> float:
    """Sum (or ``op``) a Python number over ``group``; identity without one."""
    if group is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return t.item()
