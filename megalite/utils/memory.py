"""Counting the activation memory autograd keeps for backward."""

from typing import Iterable

import torch


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
