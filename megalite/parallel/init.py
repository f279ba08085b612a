"""Parameter initialisation that depends only on the seed and the parameter's name.

Every parameter is drawn in full from a generator seeded by (seed, name) and then cut to
this rank's shard, so any parallel layout starts from exactly the weights of one device.
Layers describe their parameters with ``mark``; ``initialize`` does the drawing.
"""

import hashlib
from typing import Callable, Optional

import torch

from megalite.parallel import state


def mark(param: torch.nn.Parameter, std: Optional[float], fill: float = 0.0,
         tp_dim: Optional[int] = None, full: Optional[list] = None,
         shard_fn: Optional[Callable] = None, bound: Optional[float] = None) -> torch.nn.Parameter:
    """Record how to initialise ``param`` (normal(0, std), uniform(-bound, bound) when ``bound``
    is given, or constant ``fill`` when std is None) and along which dimension it is split over
    tensor-parallel ranks. A tensor that is not an even split (replicated key/value heads)
    gives its ``full`` shape and ``shard_fn``."""
    param.init_std, param.init_fill, param.init_bound, param.tp_dim = std, fill, bound, tp_dim
    param.tp_full_shape, param.tp_shard_fn = full, shard_fn
    return param


def name_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def full_shape(param) -> list:
    if param.tp_full_shape is not None:
        return list(param.tp_full_shape)
    shape = list(param.shape)
    if param.tp_dim is not None:
        shape[param.tp_dim] *= state.get().tp_size
    return shape


def shard(full: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
    """This rank's contiguous part of ``full`` along ``dim`` (all of it when not split)."""
    s = state.get()
    if dim is None or s.tp_size == 1:
        return full
    return full.chunk(s.tp_size, dim=dim)[s.tp_rank]


def shard_like(param, full: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full`` for ``param``: the split its layer recorded with ``mark``."""
    return param.tp_shard_fn(full) if param.tp_shard_fn is not None else shard(full, param.tp_dim)


@torch.no_grad()
def initialize(module: torch.nn.Module, seed: int) -> None:
    for name, p in module.named_parameters():
        if not hasattr(p, "init_std"):
            raise AssertionError(f"parameter {name} has no initialisation recorded (use parallel.init.mark)")
        bound = p.init_bound
        if p.init_std is None and bound is None:
            p.fill_(p.init_fill)
            continue
        g = torch.Generator().manual_seed(name_seed(seed, name))
        full = torch.empty(full_shape(p), dtype=torch.float32)
        if bound is not None:
            full.uniform_(-bound, bound, generator=g)
        else:
            full.normal_(0.0, p.init_std, generator=g)
        p.copy_(shard_like(p, full))
