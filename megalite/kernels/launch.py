"""Launch helpers shared by the Triton modules: flat row views and warp counts."""

import torch
import triton


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a [rows, last dim] matrix with unit stride along the last dim (copies only if needed)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def row_block(n: int) -> int:
    """A power-of-two block holding a whole row of ``n`` elements."""
    return triton.next_power_of_2(n)


def warps_for(block: int) -> int:
    """Warps for a program that streams ``block`` elements at a time: one warp per 256, 1 to 16."""
    return max(1, min(16, block // 256))
