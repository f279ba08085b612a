"""The one place that decides whether an op runs as a fused Triton kernel or as its reference.

``--fused-kernels`` / ``--no-fused-kernels`` set the process-wide choice through
``set_fused_kernels``; unset, fused kernels are on when CUDA and triton are both present.
A kernel runs where Triton can run it: on CUDA tensors, or on any tensor under
``TRITON_INTERPRET=1`` (which ``set_fused_kernels(True)`` turns on when there is no CUDA).
Elsewhere the reference runs, so a CPU-only install without triton works unchanged.

The Triton modules are imported on first use only, so that the interpreter setting is in
place before their ``@triton.jit`` functions are created. The interpreter must also be chosen
before triton itself is imported (peft imports it): for CPU runs of the kernels, export
``TRITON_INTERPRET=1`` up front.
"""

import contextlib
import functools
import importlib
import os
from typing import Optional

import torch

from megalite.errors import MegaliteError
from megalite.kernels import reference
from megalite.utils.packages import installed

_requested: Optional[bool] = None  # None: automatic


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def set_fused_kernels(requested: Optional[bool]) -> None:
    """True forces the Triton kernels on (under the interpreter without CUDA), False forces
    the references, None picks them when CUDA and triton are present."""
    global _requested
    if requested and not installed("triton"):
        raise MegaliteError("--fused-kernels needs triton (pip install triton)")
    if requested and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    _requested = requested


@contextlib.contextmanager
def fused_kernels(requested: Optional[bool]):
    """``set_fused_kernels`` for the duration of a block (tests, benchmarks)."""
    saved = _requested
    set_fused_kernels(requested)
    try:
        yield
    finally:
        set_fused_kernels(saved)


def fused_kernels_on() -> bool:
    if _requested is None:
        return torch.cuda.is_available() and installed("triton")
    return _requested


def triton_runs_on(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can process ``t`` here."""
    return installed("triton") and (t.is_cuda or interpreting())


def triton_module(name: str):
    return importlib.import_module(f"megalite.kernels.{name}")


def _dispatched(reference_fn, module: str):
    """An op that runs ``megalite.kernels.<module>.<same name>`` when fused kernels are on and
    Triton can run on its first argument, else ``reference_fn``."""
    name = reference_fn.__name__

    @functools.wraps(reference_fn)
    def op(x, *args, **kwargs):
        if fused_kernels_on() and triton_runs_on(x):
            return getattr(triton_module(module), name)(x, *args, **kwargs)
        return reference_fn(x, *args, **kwargs)

    return op


rms_norm = _dispatched(reference.rms_norm, "norm")
layer_norm = _dispatched(reference.layer_norm, "norm")
rotary_qk = _dispatched(reference.rotary_qk, "rope")
swiglu = _dispatched(reference.swiglu, "silu_mul")
cross_entropy_statistics = _dispatched(reference.cross_entropy_statistics, "cross_entropy")
cross_entropy_gradient = _dispatched(reference.cross_entropy_gradient, "cross_entropy")


@functools.lru_cache(maxsize=None)
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_implementation(backend: str, q: torch.Tensor, dropout_p: float = 0.0,
                             mask: Optional[torch.Tensor] = None) -> str:
    """The backend that actually runs: ``flash_attn`` needs the package, CUDA and fp16/bf16;
    ``triton`` needs Triton to run on ``q`` and no dropout; anything missing degrades to the
    next (flash_attn -> triton -> sdpa). An explicit mask (decoding with a cache) is SDPA's."""
    if mask is not None:
        return "sdpa"
    if backend == "flash_attn":
        if flash_attn_installed() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            return "flash_attn"
        backend = "triton"
    if backend == "triton" and triton_runs_on(q) and dropout_p == 0.0:
        return "triton"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa",
              cu_seqlens: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              mask: Optional[torch.Tensor] = None, window: Optional[int] = None) -> torch.Tensor:
    """Causal attention, [seq, batch, heads, dim] in and out, by ``backend`` (see
    ``attention_implementation``); arguments as in ``reference.attention``."""
    impl = attention_implementation(backend, q, dropout_p, mask)
    if impl == "triton":
        return triton_module("flash_attention").attention(q, k, v, cu_seqlens, window)
    if impl == "flash_attn":
        return _flash_attn(q, k, v, cu_seqlens, dropout_p, window)
    return reference.attention(q, k, v, cu_seqlens, dropout_p, mask, window)


def _flash_attn(q, k, v, cu_seqlens, dropout_p, window):
    """The flash-attn package's kernels; its layout is [batch, seq, heads, dim] (varlen: [tokens, heads, dim]).
    Its ``window_size`` is (keys before, keys after), -1 for unlimited."""
    import flash_attn

    s, b = q.shape[:2]
    window_size = (-1, -1) if window is None else (window, 0)
    if cu_seqlens is None:
        out = flash_attn.flash_attn_func(*(t.transpose(0, 1) for t in (q, k, v)), dropout_p=dropout_p, causal=True,
                                         window_size=window_size)
        return out.transpose(0, 1)
    reference.document_starts(cu_seqlens, s, b)  # the same validation as the other backends
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    flat = [t.transpose(0, 1).reshape(s * b, *t.shape[2:]) for t in (q, k, v)]
    out = flash_attn.flash_attn_varlen_func(*flat, cu, cu, longest, longest, dropout_p=dropout_p, causal=True,
                                            window_size=window_size)
    return out.view(b, s, *q.shape[2:]).transpose(0, 1)
