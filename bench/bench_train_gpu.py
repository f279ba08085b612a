"""MFU of a ~1B Llama-style model at sequence 2048 in bf16 on one GPU (skips without CUDA).

    python bench/bench_train_gpu.py [--micro-batch-size 4] [--steps 10] [--recompute selective]

Runs megalite's real Trainer.train_step on --mock-data (no data loading in the timing),
times --steps steps after 3 warm-up steps and prints one line with tokens/s, TFLOP/s and MFU
(model FLOPs from megalite.model.flops, peak from its table of GPUs).
"""

import argparse
import time

import torch

from megalite.config import parse_config, validate
from megalite.model.flops import peak_tflops, train_flops
from megalite.training.data import microbatches
from megalite.training.trainer import Trainer

# Llama-3.2-1B-like: 16 layers, width 2048, 32 query / 8 key-value heads, SwiGLU 8192, 128k vocab.
ARCH = ["--num-layers", "16", "--hidden-size", "2048", "--num-attention-heads", "32", "--group-query-attention",
        "--num-query-groups", "8", "--ffn-hidden-size", "8192", "--normalization", "RMSNorm",
        "--position-embedding-type", "rope", "--rotary-base", "500000", "--swiglu", "--disable-bias-linear",
        "--vocab-size", "128256", "--hidden-dropout", "0", "--attention-dropout", "0", "--seq-length", "2048"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--recompute", choices=["full", "selective"], default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_train_gpu: skipped (no CUDA device)")
        return
    argv = ARCH + ["--mock-data", "--bf16", "--micro-batch-size", str(a.micro_batch_size),
                   "--global-batch-size", str(a.micro_batch_size), "--train-iters", "1000", "--num-workers", "0",
                   "--eval-iters", "0", "--lr", "1e-4"]
    if a.recompute:
        argv += ["--recompute-granularity", a.recompute]
    cfg = validate(parse_config(argv))
    trainer = Trainer(cfg, torch.device("cuda", 0))
    batch = microbatches(trainer.train_iter, 1, trainer.device)
    for _ in range(3):
        trainer.train_step(batch)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        trainer.train_step(batch)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    tokens = a.micro_batch_size * 2048
    tflops = train_flops(cfg.model, 2048, a.micro_batch_size) / dt / 1e12
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    params = sum(p.numel() for p in trainer.model.parameters())
    mfu = f"MFU {100 * tflops / peak:.1f}%" if peak else "MFU n/a (unknown GPU)"
    print(f"bench_train_gpu: {name} | {params / 1e9:.2f}B params, bf16, seq 2048, micro batch {a.micro_batch_size}, "
          f"recompute {a.recompute} | {1000 * dt:.0f} ms/step | {tokens / dt:.0f} tok/s | {tflops:.0f} TFLOP/s | "
          f"{mfu} | max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
