"""MFU of a ~1B Llama-style model at sequence 2048 in bf16 on one GPU (skips without CUDA).

    python bench/bench_train_gpu.py [--micro-batch-size 4] [--steps 10] [--recompute selective] [--seq 2048]

Long sequences over C GPUs with context parallelism (every rank takes part in each sequence):

    torchrun --nproc-per-node C bench/bench_train_gpu.py --cp C --seq 32768 --micro-batch-size 1

Runs megalite's real Trainer.train_step on --mock-data (no data loading in the timing),
times --steps steps after 3 warm-up steps and prints one line with tokens/s, TFLOP/s and MFU
(model FLOPs from megalite.model.flops, peak from its table of GPUs).
"""

import argparse
import os
import time

import torch

from megalite.config import parse_config, validate
from megalite.model.flops import peak_tflops, train_flops
from megalite.parallel.bootstrap import setup_distributed
from megalite.training.data import microbatches
from megalite.training.trainer import Trainer

# Llama-3.2-1B-like: 16 layers, width 2048, 32 query / 8 key-value heads, SwiGLU 8192, 128k vocab.
ARCH = ["--num-layers", "16", "--hidden-size", "2048", "--num-attention-heads", "32", "--group-query-attention",
        "--num-query-groups", "8", "--ffn-hidden-size", "8192", "--normalization", "RMSNorm",
        "--position-embedding-type", "rope", "--rotary-base", "500000", "--swiglu", "--disable-bias-linear",
        "--vocab-size", "128256", "--hidden-dropout", "0", "--attention-dropout", "0"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--recompute", choices=["full", "selective"], default=None)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--cp", type=int, default=1, help="context-parallel size (= torchrun's --nproc-per-node)")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_train_gpu: skipped (no CUDA device)")
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    argv = ARCH + ["--mock-data", "--bf16", "--micro-batch-size", str(a.micro_batch_size), "--seq-length", str(a.seq),
                   "--max-position-embeddings", str(a.seq), "--context-parallel-size", str(a.cp),
                   "--global-batch-size", str(a.micro_batch_size * world // a.cp), "--train-iters", "1000",
                   "--num-workers", "0", "--eval-iters", "0", "--lr", "1e-4"]
    if a.recompute:
        argv += ["--recompute-granularity", a.recompute]
    cfg = validate(parse_config(argv), world)
    trainer = Trainer(cfg, setup_distributed(None))
    batch = microbatches(trainer.train_iter, 1, trainer.device)
    for _ in range(3):
        trainer.train_step(batch)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        trainer.train_step(batch)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    if int(os.environ.get("RANK", "0")):
        return
    tokens = a.micro_batch_size * a.seq * world // a.cp  # per step, all ranks together
    tflops = train_flops(cfg.model, a.seq, a.micro_batch_size) / a.cp / dt / 1e12  # per GPU
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    params = sum(p.numel() for p in trainer.model.parameters())
    mfu = f"MFU {100 * tflops / peak:.1f}%" if peak else "MFU n/a (unknown GPU)"
    print(f"bench_train_gpu: {name} | {params / 1e9:.2f}B params, bf16, seq {a.seq}, micro batch {a.micro_batch_size}, "
          f"CP {a.cp} of {world} GPUs, recompute {a.recompute} | {1000 * dt:.0f} ms/step | {tokens / dt:.0f} tok/s | "
          f"{tflops:.0f} TFLOP/s | "
          f"{mfu} | max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
