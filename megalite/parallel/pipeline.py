"""Running the micro-batches of one global batch through the pipeline stages.

``forward_backward`` is the one call the trainer makes per step (and, forward only, per
evaluation batch). Without pipelining it is the plain gradient-accumulation loop. With P
stages it runs 1F1B: stage r first does P - r - 1 forward passes (warm-up), then alternates
one forward and one backward (steady state), then finishes the outstanding backwards
(cool-down), so at most P - r micro-batches of activations are alive on stage r. With v
model chunks per stage (virtual stages) it runs the interleaved variant, whose bubble is v
times smaller. ``schedule`` lists a stage's work; one engine runs any such list.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist

from megalite.parallel import state


def model_chunks(model) -> List[torch.nn.Module]:
    """The model chunks (virtual stages) of one pipeline stage's model, in order: the items of a
    list or ModuleList (``model.gpt.ModelChunks``), else the one model."""
    return list(model) if isinstance(model, (list, tuple, torch.nn.ModuleList)) else [model]


def forward_backward(
    model,  # one model, or this stage's list of chunks (virtual stages) in order
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
    chunks = model_chunks(model)
    if state.get().pp_size == 1:
        return _no_pipeline(chunks[0], batch, loss_fn, forward_only, grad_buffer, loss_scale)
    return _pipelined(chunks, batch, loss_fn, tuple(activation_shape), dtype, forward_only, grad_buffer, loss_scale)


def _no_pipeline(model, batch, loss_fn, forward_only, grad_buffer, loss_scale) -> float:
    total = 0.0
    for i, mb in enumerate(batch):
        if grad_buffer is not None:
            grad_buffer.set_last_microbatch(i == len(batch) - 1)
        loss = loss_fn(model(mb["tokens"], labels=mb.get("labels"), positions=mb.get("position_ids"),
                             shared_prefix=mb.get("shared_prefix")), mb)
        if not forward_only:
            (loss * loss_scale).backward() if loss_scale != 1.0 else loss.backward()
        total += loss.item()
    return total


def schedule(pp_size: int, pp_rank: int, micro_batches: int, chunks: int = 1,
             forward_only: bool = False) -> List[Tuple[str, int, int]]:
    """This stage's ordered work: ("F" or "B", micro-batch, model chunk).

    One chunk is non-interleaved 1F1B: P - r - 1 warm-up forwards, then one forward / one
    backward, then the remaining backwards. With v chunks (virtual stages) micro-batches go
    through the chunks in groups of P, and the warm-up is 2(P - r - 1) + (v - 1)P steps, as in
    Megatron's interleaved schedule.
    """
    p, r, m, v = pp_size, pp_rank, micro_batches, chunks
    total = m * v

    def fwd(k):
        return ("F", (k // (p * v)) * p + k % p if v > 1 else k, (k // p) % v if v > 1 else 0)

    def bwd(k):
        return ("B", (k // (p * v)) * p + k % p if v > 1 else k, v - 1 - (k // p) % v if v > 1 else 0)

    if forward_only:
        return [fwd(k) for k in range(total)]
    if v == 1:
        warmup = min(p - r - 1, m)
    else:
        warmup = total if m == p else min(2 * (p - r - 1) + (v - 1) * p, total)
    ops = [fwd(k) for k in range(warmup)]
    for k in range(total - warmup):
        ops += [fwd(warmup + k), bwd(k)]
    return ops + [bwd(k) for k in range(total - warmup, total)]


def _pipelined(chunks, batch, loss_fn, shape, dtype, forward_only, grad_buffer, loss_scale) -> float:
    """Run ``schedule`` on this stage. Sends are posted and not waited for until the step ends;
    a stage blocks only on the receive of data it needs next, and every message carries a tag
    naming its micro-batch, virtual stage and direction, so order across peers never matters."""
    s = state.get()
    p, r, v, m = s.pp_size, s.pp_rank, len(chunks), len(batch)
    last_vstage = p * v - 1
    device = batch[0]["tokens"].device
    nxt, prv = s.pp_ranks[(r + 1) % p], s.pp_ranks[(r - 1) % p]
    saved, sends, total = {}, [], 0.0
    ops = schedule(p, r, m, v, forward_only)
    n_backward = sum(op == "B" for op, _, _ in ops)

    def tag(mb, vstage, backward):
        return (mb * (last_vstage + 1) + vstage) * 2 + int(backward)

    def recv(src, t):
        x = torch.empty(shape, dtype=dtype, device=device)
        dist.irecv(x, src, tag=t).wait()
        return x

    for op, mb_i, c in ops:
        vstage, mb = c * p + r, batch[mb_i]
        if op == "F":
            x = None if vstage == 0 else recv(prv, tag(mb_i, vstage, False))
            if x is not None and not forward_only:
                x.requires_grad_(True)
            with torch.set_grad_enabled(not forward_only):
                out = chunks[c](mb["tokens"] if vstage == 0 else None,
                                labels=mb.get("labels") if vstage == last_vstage else None, hidden=x,
                                positions=mb.get("position_ids"), shared_prefix=mb.get("shared_prefix"))
                if vstage == last_vstage:
                    out = loss_fn(out, mb)
                    total += out.item()
                    out = out * loss_scale if loss_scale != 1.0 else out
                else:
                    sends.append(dist.isend(out.detach().contiguous(), nxt, tag=tag(mb_i, vstage + 1, False)))
            if not forward_only:
                saved[(mb_i, c)] = (x, out)
        else:
            x, out = saved.pop((mb_i, c))
            grad = None if vstage == last_vstage else recv(nxt, tag(mb_i, vstage, True))
            if grad_buffer is not None:
                n_backward -= 1
                grad_buffer.set_last_microbatch(n_backward == 0)
            torch.autograd.backward(out, grad_tensors=grad)
            if vstage > 0:
                sends.append(dist.isend(x.grad.contiguous(), prv, tag=tag(mb_i, vstage - 1, True)))
    for req in sends:
        req.wait()
    return total
