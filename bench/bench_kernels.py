"""Each fused kernel vs torch eager, torch.compile and liger-kernel, forward + backward (GPU; skips without CUDA).

    python bench/bench_kernels.py [--kernels rms_norm,layer_norm,rope,swiglu,cross_entropy,attention]
    python bench/bench_kernels.py --dry-run   # tiny shapes on CPU under TRITON_INTERPRET=1 (what the tests run)

Shapes are a Llama-3-8B layer at sequence 4096, batch 1, bf16: hidden 4096, 32 query /
8 key-value heads of 128, SwiGLU 14336, vocabulary 128256. One line per kernel and one
per implementation: median forward+backward time (triton.testing.do_bench), achieved
GB/s for the memory-bound kernels (minimum bytes moved: each input and output read or
written once per pass) with the share of the HBM bandwidth measured by a device copy,
TFLOP/s for attention (causal: half the square; backward counted as 2.5x the forward),
the largest forward difference from eager, and for cross entropy the peak memory the
loss adds on top of its logits. "eager" is the torch code the model runs with
--no-fused-kernels (plain F.cross_entropy on fp32 logits for the loss); for attention
the baseline is torch SDPA's flash backend. liger-kernel and flash-attn are used when
importable.
"""

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from megalite import kernels
from megalite.config import ModelConfig
from megalite.kernels import reference
from megalite.model.rotary import RotaryEmbedding
from megalite.parallel.cross_entropy import vocab_parallel_cross_entropy

FULL = dict(tokens=4096, hidden=4096, ffn=14336, vocab=128256, heads=32, kv_heads=8, head_dim=128)
TINY = dict(tokens=96, hidden=160, ffn=200, vocab=3000, heads=4, kv_heads=2, head_dim=64)


@dataclass
class Case:
    """One kernel: inputs, implementations (name -> fn(*inputs) -> output), work per fwd+bwd."""
    name: str
    shape: str
    inputs: List[torch.Tensor]
    impls: Dict[str, Callable]
    gigabytes: float = 0.0  # memory-bound kernels
    teraflops: float = 0.0  # attention
    memory: bool = False  # report the peak memory added


def liger():
    try:
        from liger_kernel.transformers import functional
        return functional
    except ImportError:
        return None


def norm_case(kind):
    """A builder for the rms_norm or layer_norm case."""
    def build(s, dt, dev):
        t, h = s["tokens"], s["hidden"]
        x = torch.randn(t, h, dtype=dt, device=dev)
        w, b = torch.rand(h, dtype=dt, device=dev) + 0.5, torch.randn(h, dtype=dt, device=dev)
        gb = 5 * t * h * x.element_size() / 1e9  # fwd: read x, write y; bwd: read x, dy, write dx
        lg = liger()
        if kind == "rms":
            case = Case("rms_norm", f"[{t}x{h}]", [x, w], {
                "megalite": lambda x, w: kernels.rms_norm(x, w, 1e-5),
                "eager": lambda x, w: reference.rms_norm(x, w, 1e-5)}, gigabytes=gb)
            if lg is not None:
                case.impls["liger"] = lambda x, w: lg.liger_rms_norm(x, w, 1e-5, in_place=False)
            return case
        case = Case("layer_norm", f"[{t}x{h}]", [x, w, b], {
            "megalite": lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5),
            "eager": lambda x, w, b: reference.layer_norm(x, w, b, 1e-5)}, gigabytes=gb)
        if lg is not None:
            case.impls["liger"] = lambda x, w, b: lg.liger_layer_norm(x, w, b, 1e-5)
        return case
    return build


def rope_case(s, dt, dev):
    t, hq, hk, d = s["tokens"], s["heads"], s["kv_heads"], s["head_dim"]
    q, k = torch.randn(t, 1, hq, d, dtype=dt, device=dev), torch.randn(t, 1, hk, d, dtype=dt, device=dev)
    cos, sin = RotaryEmbedding(d, ModelConfig(rotary_base=500000)).to(dev)(torch.arange(t, device=dev), dt)
    case = Case("rope", f"q [{t}x{hq}x{d}], k [{t}x{hk}x{d}]", [q, k], {
        "megalite": lambda q, k: kernels.rotary_qk(q, k, cos, sin),
        "eager": lambda q, k: reference.rotary_qk(q, k, cos, sin)},
        gigabytes=4 * (q.numel() + k.numel()) * q.element_size() / 1e9)  # each pass reads and writes q, k
    lg = liger()
    if lg is not None:  # liger's layout is [batch, heads, seq, dim] with cos/sin [1, seq, dim]
        def liger_rope(q, k):
            qo, ko = lg.liger_rope(q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3), cos.view(1, t, d), sin.view(1, t, d))
            return qo.permute(2, 0, 1, 3), ko.permute(2, 0, 1, 3)
        case.impls["liger"] = liger_rope
    return case


def swiglu_case(s, dt, dev):
    t, f = s["tokens"], s["ffn"]
    gate, up = torch.randn(t, f, dtype=dt, device=dev), torch.randn(t, f, dtype=dt, device=dev)
    case = Case("swiglu", f"[{t}x{f}]", [gate, up], {"megalite": kernels.swiglu, "eager": reference.swiglu},
                gigabytes=8 * t * f * gate.element_size() / 1e9)  # fwd: 2 reads, 1 write; bwd: 3 reads, 2 writes
    lg = liger()
    if lg is not None:
        case.impls["liger"] = lg.liger_swiglu
    return case


def cross_entropy_case(s, dt, dev):
    t, v = s["tokens"], s["vocab"]
    logits = torch.randn(t, v, dtype=dt, device=dev) * 2
    target = torch.randint(0, v, (t,), device=dev)
    case = Case("cross_entropy", f"[{t}x{v}]", [logits], {
        "megalite": lambda x: vocab_parallel_cross_entropy(x, target),
        "eager": lambda x: F.cross_entropy(x.float(), target, reduction="none")},
        gigabytes=3 * t * v * logits.element_size() / 1e9, memory=True)  # fwd: read; bwd: read, write
    lg = liger()
    if lg is not None:
        case.impls["liger"] = lambda x: lg.liger_cross_entropy(x, target, reduction="none")
    return case


def attention_case(s, dt, dev):
    t, hq, hk, d = s["tokens"], s["heads"], s["kv_heads"], s["head_dim"]
    q = torch.randn(t, 1, hq, d, dtype=dt, device=dev)
    k, v = torch.randn(t, 1, hk, d, dtype=dt, device=dev), torch.randn(t, 1, hk, d, dtype=dt, device=dev)
    forward_flops = 4 * hq * d * t * (t + 1) / 2  # QK^T and PV over the causal half
    case = Case("attention", f"causal, seq {t}, {hq}/{hk} heads of {d}", [q, k, v], {
        "megalite": lambda q, k, v: kernels.attention(q, k, v, "triton"),
        "eager": lambda q, k, v: reference.attention(q, k, v)}, teraflops=3.5 * forward_flops / 1e12)
    if dev == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash(q, k, v):  # the flash backend on key/value heads repeated to the query heads
            k, v = (x.repeat_interleave(hq // hk, dim=2) for x in (k, v))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(*(x.permute(1, 2, 0, 3) for x in (q, k, v)), is_causal=True)
            return out.permute(2, 0, 1, 3)
        case.impls["sdpa_flash"] = sdpa_flash
        if kernels.dispatch.flash_attn_installed():
            case.impls["flash_attn"] = lambda q, k, v: kernels.attention(q, k, v, "flash_attn")
    return case


def attention_window_case(s, dt, dev):
    """Sliding-window attention over an eighth of the sequence: the Triton kernel skips the key
    blocks outside the window, so it should take well under the causal case's time."""
    t, hq, hk, d = s["tokens"], s["heads"], s["kv_heads"], s["head_dim"]
    w = max(t // 8, 1)
    q = torch.randn(t, 1, hq, d, dtype=dt, device=dev)
    k, v = torch.randn(t, 1, hk, d, dtype=dt, device=dev), torch.randn(t, 1, hk, d, dtype=dt, device=dev)
    pairs = (w + 1) * (w + 2) // 2 + (t - w - 1) * (w + 1)  # query-key pairs inside the window
    case = Case("attention_window", f"window {w}, seq {t}, {hq}/{hk} heads of {d}", [q, k, v], {
        "megalite": lambda q, k, v: kernels.attention(q, k, v, "triton", window=w),
        "eager": lambda q, k, v: reference.attention(q, k, v, window=w)}, teraflops=3.5 * 4 * hq * d * pairs / 1e12)
    if dev == "cuda" and kernels.dispatch.flash_attn_installed():
        case.impls["flash_attn"] = lambda q, k, v: kernels.attention(q, k, v, "flash_attn", window=w)
    return case


CASES = {"rms_norm": norm_case("rms"), "layer_norm": norm_case("layer"), "rope": rope_case, "swiglu": swiglu_case,
         "cross_entropy": cross_entropy_case, "attention": attention_case, "attention_window": attention_window_case}


def fwd_bwd(fn, inputs, grads):
    """One forward + backward of ``fn``; returns the forward's first output."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, grads[: len(outs)])
    return outs[0]


def time_ms(fn, inputs, grads, dry_run: bool) -> float:
    if dry_run:
        start = time.perf_counter()
        fwd_bwd(fn, inputs, grads)
        return 1000 * (time.perf_counter() - start)
    from triton.testing import do_bench

    return do_bench(lambda: fwd_bwd(fn, inputs, grads), grad_to_none=inputs)


def added_memory_gib(fn, inputs, grads) -> float:
    """Peak memory a forward + backward allocates beyond what was already there (CUDA only)."""
    for x in inputs:
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fwd_bwd(fn, inputs, grads)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**30


def hbm_gbps() -> float:
    """Device-to-device copy bandwidth (read + write) of 1 GiB: the practical HBM peak."""
    from triton.testing import do_bench

    x = torch.empty(2**30 // 4, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / 1e9 / (do_bench(lambda: y.copy_(x)) / 1e3)


def run_case(case: Case, dry_run: bool, hbm: float) -> List[str]:
    """Time every implementation of ``case``; one line each, then how megalite compares."""
    lines, times, peaks, grads = [], {}, {}, None
    with torch.no_grad():
        expected = first(case.impls["eager"](*case.inputs))
    for name, fn in case.impls.items():
        inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in case.inputs]
        try:
            with torch.no_grad():
                out = fn(*inputs)
            if grads is None:
                grads = [torch.randn_like(o) for o in (out if isinstance(out, tuple) else (out,))]
            diff = (first(out).float() - expected.float()).abs().max().item()
            ms = time_ms(fn, inputs, grads, dry_run)
            if case.memory and torch.cuda.is_available():
                peaks[name] = added_memory_gib(fn, inputs, grads)
        except Exception as e:  # an optional third-party kernel that does not fit: say so, go on
            lines.append(f"bench_kernels: {case.name} | {name} | failed: {type(e).__name__}: {str(e)[:120]!r}")
            continue
        times[name] = ms
        if case.gigabytes:
            rate = f"{case.gigabytes / (ms / 1e3):.0f} GB/s"
            if hbm:
                rate += f" ({100 * case.gigabytes / (ms / 1e3) / hbm:.0f}% of HBM)"
        else:
            rate = f"{case.teraflops / (ms / 1e3):.1f} TFLOP/s"
        memory = f" | +{peaks[name]:.2f} GiB peak" if name in peaks else ""
        lines.append(f"bench_kernels: {case.name} {case.shape} | {name} | {ms:.3f} ms | {rate} | "
                     f"max diff vs eager {diff:.1e}{memory}")
    base = "sdpa_flash" if "sdpa_flash" in times else "eager"
    if "megalite" in times and base in times:
        summary = f"megalite speed vs {base} {times[base] / times['megalite']:.2f}x"
        if "megalite" in peaks and peaks.get("eager"):
            summary += f", peak memory vs eager {peaks['megalite'] / peaks['eager']:.2f}x"
        lines.append(f"bench_kernels: {case.name} | {summary}")
    return lines


def first(out):
    return out[0] if isinstance(out, tuple) else out


def add_compiled(case: Case):
    """torch.compile of the eager implementation, compiled once before timing."""
    compiled = torch.compile(case.impls["eager"])
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in case.inputs]
    fwd_out = compiled(*inputs)
    outs = fwd_out if isinstance(fwd_out, tuple) else (fwd_out,)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    case.impls["torch.compile"] = compiled


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default=",".join(dict.fromkeys(CASES)), help="comma-separated subset")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1, one run each")
    a = p.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("bench_kernels: skipped (no CUDA device)")
        return
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    shapes = TINY if a.dry_run else FULL
    hbm = hbm_gbps() if dev == "cuda" else 0.0
    if hbm:
        print(f"bench_kernels: {torch.cuda.get_device_name(0)} | measured HBM copy bandwidth {hbm:.0f} GB/s")
    torch.manual_seed(0)
    with kernels.fused_kernels(True):  # the "megalite" rows (under the interpreter without CUDA); others call torch
        for name in a.kernels.split(","):
            run_kernel(name, shapes, dt, dev, a.dry_run, hbm)


def run_kernel(name, shapes, dt, dev, dry_run, hbm):
    """Build one kernel's case, add torch.compile on a GPU, print its lines."""
    if name not in CASES:
        sys.exit(f"error: unknown kernel {name!r} (choose from {', '.join(CASES)})")
    case = CASES[name](shapes, dt, dev)
    if dev == "cuda" and not name.startswith("attention"):  # compiling SDPA gives SDPA
        try:
            add_compiled(case)
        except Exception as e:
            print(f"bench_kernels: {name} | torch.compile | failed: {type(e).__name__}: {str(e)[:120]!r}")
    for line in run_case(case, dry_run, hbm):
        print(line, flush=True)


if __name__ == "__main__":
    main()
