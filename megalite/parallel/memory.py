"""Counting memory: the activations autograd keeps for backward, and the training state."""

from typing import Dict, Iterable, Sequence

import torch

from megalite.parallel.data_parallel import bucket_layout


def saved_activation_bytes(fn, params: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn()`` runs, parameters excluded.

    Tensors sharing a storage (views, a tensor saved by two ops) count once.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def training_state_bytes(numels: Sequence[int], dp_size: int, zero_stage: int, param_bytes: int,
                         bucket_size: int = 40_000_000, dp_rank: int = 0, ends: Sequence[int] = ()) -> Dict[str, int]:
    """Bytes data-parallel rank ``dp_rank`` keeps between steps for parameters of ``numels``
    (in buffer order; ``ends``: indices that close a bucket, one per unit with ZeRO-3):
    parameters, the fp32 gradients, fp32 master weights (only when parameters are not fp32
    themselves) and Adam's two fp32 moments. ZeRO-1 keeps the last two for this rank's share
    only, ZeRO-2 the gradients too, ZeRO-3 everything. Uses the real bucket layout, padding
    included, so it equals what GradBuffer / FullyShardedBuffer and Optimizer allocate."""
    sharded = zero_stage >= 1 and dp_size > 1
    layout = bucket_layout(numels, bucket_size if zero_stage < 2 else 2**62, dp_size, sharded, ends)
    total = layout[-1][1] if layout else 0
    owned = 0  # parameter elements (not padding) this rank updates
    for start, end, members in layout:
        real_end = start + sum(numels[i] for i in members)
        share = (end - start) // dp_size if sharded else end - start
        lo = start + (dp_rank * share if sharded else 0)
        owned += max(0, min(lo + share, real_end) - lo)
    params = total // dp_size if zero_stage == 3 and sharded else total
    grads = total // dp_size if zero_stage >= 2 and sharded else total
    out = {"params": params * param_bytes, "grads": grads * 4, "master": owned * 4 if param_bytes != 4 else 0,
           "adam": owned * 8}
    out["total"] = sum(out.values())
    return out
