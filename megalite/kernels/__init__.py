"""Fused Triton kernels for the training hot path, each beside a pure-torch reference.

The model calls the ops below; ``dispatch`` decides, in one place, whether each call runs
its Triton kernel or its reference (see docs/kernels.md).
"""

from megalite.kernels.dispatch import (  # noqa: F401
    attention,
    cross_entropy_gradient,
    cross_entropy_statistics,
    fused_kernels,
    layer_norm,
    rms_norm,
    rotary_qk,
    set_fused_kernels,
    swiglu,
)
