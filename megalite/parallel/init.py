"""Parameter initialisation that depends only on the seed and the parameter's name.

Every parameter is drawn in full from a generator seeded by (seed, name) and then cut to
this rank's shard, so any parallel layout starts from exactly the weights of one device.
Layers describe their parameters with ``mark``; ``initialize`` does the drawing.
"""

import hashlib
from typing import Optional

import torch

from megalite.parallel import state


def mark(param: torch.nn.Parameter, std: Optional[float], fill: float = 0.0,
         tp_dim: Optional[int] = None, tp_stride: int = 1) -> torch.nn.Parameter:
    """Record how to initialise ``param`` (normal(0, std), or constant ``fill`` when std is
    None) and how it is split over tensor-parallel ranks (dimension, interleaved parts)."""
    param.init_std, param.init_fill = std, fill
    param.tp_dim, param.tp_stride = tp_dim, tp_stride
    return param


def name_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def full_shape(param) -> list:
    shape = list(param.shape)
    if param.tp_dim is not None:
        shape[param.tp_dim] *= state.get().tp_size
    return shape


def shard(full: torch.Tensor, dim: Optional[int], stride: int = 1) -> torch.Tensor:
    """This rank's part of ``full``; with stride k the dimension holds k stacked blocks
    (e.g. SwiGLU's gate and up) and each rank takes its slice of every block."""
    s = state.get()
    if dim is None or s.tp_size == 1:
        return full
    blocks = full.chunk(stride, dim=dim)
    return torch.cat([b.chunk(s.tp_size, dim=dim)[s.tp_rank] for b in blocks], dim=dim)


@torch.no_grad()
def initialize(module: torch.nn.Module, seed: int) -> None:
    for name, p in module.named_parameters():
        if not hasattr(p, "init_std"):
            raise AssertionError(f"parameter {name} has no initialisation recorded (use parallel.init.mark)")
        if p.init_std is None:
            p.fill_(p.init_fill)
            continue
        g = torch.Generator().manual_seed(name_seed(seed, name))
        full = torch.empty(full_shape(p), dtype=torch.float32).normal_(0.0, p.init_std, generator=g)
        p.copy_(shard(full, p.tp_dim, p.tp_stride))
