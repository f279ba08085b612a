"""Running the micro-batches of one global batch through the pipeline stages.

``forward_backward`` is the one call the trainer makes per step (and, forward only, per
evaluation batch). Without pipelining it is the plain gradient-accumulation loop. With P
stages it runs Megatron's non-interleaved 1F1B schedule: stage r first does P - r - 1
forward passes (warm-up), then alternates one forward and one backward (steady state), then
finishes the outstanding backwards (cool-down), so at most P - r micro-batches of
activations are alive on stage r. Activations go forward and their gradients backward with
point-to-point ops; each send is paired with the receive it waits on in one batched call,
so no two stages can block on each other.
"""

from collections import deque
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from megalite.errors import MegaliteError
from megalite.parallel import state


def stage_layers(num_layers: int, pp_size: int, pp_rank: int, first: Optional[int] = None,
                 last: Optional[int] = None) -> range:
    """The layers pipeline stage ``pp_rank`` owns: ``first`` / ``last`` layers on the first /
    last stage when given (Megatron's --decoder-first/last-pipeline-num-layers), the rest split
    evenly over the other stages."""
    counts = _stage_counts(num_layers, pp_size, first, last)
    start = sum(counts[:pp_rank])
    return range(start, start + counts[pp_rank])


def _stage_counts(num_layers: int, pp_size: int, first: Optional[int], last: Optional[int]) -> List[int]:
    if pp_size == 1:
        return [num_layers]
    fixed = {0: first, pp_size - 1: last}
    rest = num_layers - sum(v for v in fixed.values() if v is not None)
    middle = [r for r in range(pp_size) if fixed.get(r) is None]
    if rest < 0 or (middle and rest % len(middle)) or (not middle and rest):
        raise MegaliteError(
            f"--num-layers {num_layers} cannot be split over --pipeline-model-parallel-size {pp_size}"
            + (f" with {first} layers on the first stage" if first is not None else "")
            + (f" and {last} on the last" if last is not None else "")
            + " (the remaining layers must divide evenly among the other stages)")
    return [fixed[r] if fixed.get(r) is not None else rest // len(middle) for r in range(pp_size)]


def _p2p(send_next=None, send_prev=None, recv_prev=None, recv_next=None):
    """Post the given sends and receives together and wait for all of them."""
    s = state.get()
    ops = []
    if send_next is not None:
        ops.append(dist.P2POp(dist.isend, send_next.contiguous(), s.pp_ranks[s.pp_rank + 1]))
    if send_prev is not None:
        ops.append(dist.P2POp(dist.isend, send_prev.contiguous(), s.pp_ranks[s.pp_rank - 1]))
    if recv_prev is not None:
        ops.append(dist.P2POp(dist.irecv, recv_prev, s.pp_ranks[s.pp_rank - 1]))
    if recv_next is not None:
        ops.append(dist.P2POp(dist.irecv, recv_next, s.pp_ranks[s.pp_rank + 1]))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()


def forward_backward(
    model,
    batch: Sequence[Dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, Dict[str, torch.Tensor]], torch.Tensor],
    activation_shape: Sequence[int],
    dtype: torch.dtype,
    forward_only: bool = False,
    grad_buffer=None,
    loss_scale: float = 1.0,
) -> float:
    """Forward (and backward) every micro-batch; returns the sum of ``loss_fn`` over them on
    the last stage (0 elsewhere). ``loss_fn(per_token_losses, micro_batch)`` gives a scalar."""
    s = state.get()
    if s.pp_size == 1:
        return _no_pipeline(model, batch, loss_fn, forward_only, grad_buffer, loss_scale)
    return _one_f_one_b(model, batch, loss_fn, tuple(activation_shape), dtype, forward_only, grad_buffer,
                        loss_scale)


def _no_pipeline(model, batch, loss_fn, forward_only, grad_buffer, loss_scale) -> float:
    total = 0.0
    for i, mb in enumerate(batch):
        if grad_buffer is not None:
            grad_buffer.set_last_microbatch(i == len(batch) - 1)
        loss = loss_fn(model(mb["tokens"], labels=mb["labels"]), mb)
        if not forward_only:
            (loss * loss_scale).backward() if loss_scale != 1.0 else loss.backward()
        total += loss.item()
    return total


def _one_f_one_b(model, batch, loss_fn, shape, dtype, forward_only, grad_buffer, loss_scale) -> float:
    s = state.get()
    first, last = s.is_first_stage, s.is_last_stage
    device = batch[0]["tokens"].device
    m = len(batch)
    total = 0.0
    inputs: deque = deque()
    outputs: deque = deque()
    backwards_done = 0

    def empty():
        return torch.empty(shape, dtype=dtype, device=device)

    def forward(i: int, x: Optional[torch.Tensor]):
        nonlocal total
        mb = batch[i]
        if x is not None and not forward_only:
            x.requires_grad_(True)
        with torch.set_grad_enabled(not forward_only):
            out = model(mb["tokens"] if first else None, labels=mb["labels"] if last else None, hidden=x)
            if last:
                out = loss_fn(out, mb)
                total += out.item()
                out = out * loss_scale if loss_scale != 1.0 else out
        if not forward_only:
            inputs.append(x)
            outputs.append(out)
        return out

    def backward(grad_out: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        nonlocal backwards_done
        x, out = inputs.popleft(), outputs.popleft()
        if grad_buffer is not None:
            grad_buffer.set_last_microbatch(backwards_done == m - 1)
        torch.autograd.backward(out, grad_tensors=None if last else grad_out)
        backwards_done += 1
        return None if first else x.grad

    def recv_forward():
        if first:
            return None
        x = empty()
        _p2p(recv_prev=x)
        return x

    if forward_only:
        for i in range(m):
            out = forward(i, recv_forward())
            if not last:
                _p2p(send_next=out.detach())
        return total

    warmup = min(s.pp_size - s.pp_rank - 1, m)
    for i in range(warmup):
        out = forward(i, recv_forward())
        if not last:
            _p2p(send_next=out.detach())
    x = recv_forward() if warmup < m else None
    for i in range(warmup, m):
        out = forward(i, x)
        grad = None
        if not last:  # hand the activation on and wait for the gradient of an earlier one
            grad = empty()
            _p2p(send_next=out.detach(), recv_next=grad)
        grad_in = backward(grad)
        if i == m - 1:
            if not first:
                _p2p(send_prev=grad_in)
        else:
            x = None if first else empty()
            _p2p(send_prev=grad_in if not first else None, recv_prev=x)
    for _ in range(warmup):
        grad = None
        if not last:
            grad = empty()
            _p2p(recv_next=grad)
        grad_in = backward(grad)
        if not first:
            _p2p(send_prev=grad_in)
    return total
