"""SFT throughput with packing vs dynamic padding, and training-state memory of LoRA vs full
fine-tuning, in one run (CPU or GPU).

    python bench/bench_sft.py [--examples 256 --seq-length 1024 --median 180 --sigma 0.8]

Example lengths follow a log-normal distribution like instruction sets' (median --median
tokens, a long tail cut at --seq-length; prompts 40% of each). The same examples go through
megalite's real Trainer.train_step twice: rows of one example padded to the longest in each
micro-batch, and rows packed best-fit-decreasing to --seq-length (attention kept inside each
example). Reported: trainable tokens per second and the share of computed positions that are
padding (throughput in bf16 on GPU, fp32 on CPU). Memory: the bytes one rank keeps for
parameters, gradient buffers and optimizer state (distinct storages of the real objects, bf16
mixed precision) with full fine-tuning and with LoRA (rank --lora-rank on every linear layer).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import llama_flags  # noqa: E402
from megalite.config import parse_config, validate  # noqa: E402
from megalite.data.sft import SFTDataset, collate_sft  # noqa: E402
from megalite.model.heads import skip_unlabelled  # noqa: E402
from megalite.posttrain.lora_io import LoRA  # noqa: E402
from megalite.training.stage import Stage  # noqa: E402
from megalite.training.trainer import Trainer  # noqa: E402

ARCH = llama_flags(layers=4, hidden=256, heads=8, kv_heads=4, vocab_size=8192)


def trainer(seq_length, micro_batch, extra=()):
    argv = ARCH + ["--seq-length", seq_length, "--mock-data", "--micro-batch-size", micro_batch,
                   "--global-batch-size", micro_batch, "--train-iters", 10**6, "--lr", 1e-5, "--num-workers", 0,
                   "--eval-iters", 0, *extra]
    if torch.cuda.is_available() and "--bf16" not in extra:
        argv.append("--bf16")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stage = Stage([LoRA()])  # as the entrypoints give it: --lora-rank adds adapters
    tr = Trainer(validate(parse_config([str(x) for x in argv])), device, stage)
    skip_unlabelled(tr.model)  # as SFTStage does: the rows' prompts and padding skip the output layer
    return tr


def examples(n, seq_length, median, sigma, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, n).astype(int), 16, seq_length + 1)
    out = []
    for length in lengths:
        ids = rng.integers(0, 8192, length)
        mask = np.zeros(length, dtype=bool)
        mask[int(0.4 * length):] = True
        out.append((ids, mask))
    return out


def run_epoch(tr, ds, micro_batch, pad_to, packing):
    """One pass over the rows; (trainable tokens / s, padding share of the computed positions)."""
    rows = [ds[i] for i in range(len(ds))]
    batches = [collate_sft(rows[i:i + micro_batch], pad_to=pad_to, multiple_of=8)
               for i in range(0, len(rows), micro_batch)]
    device = tr.device
    computed = real = trained = 0
    tr.train_step([{k: v.to(device) for k, v in batches[0].items() if packing or k != "position_ids"}])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches:
        mb = {k: v.to(device) for k, v in b.items() if packing or k != "position_ids"}
        tr.train_step([mb])
        computed += b["tokens"].numel()
        trained += int(b["loss_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    real = sum(len(r["tokens"]) for r in rows)
    return trained / elapsed, 1 - real / computed


def state_bytes(tr):
    """Parameters, gradient buffers and optimizer state this rank holds (distinct storages)."""
    opt = tr.optimizer
    tensors = list(tr.model.parameters()) + [tr.grads.buffer] + [x.master for x in opt.pieces] + \
        [t for st in opt.adam.state.values() for t in st.values() if torch.is_tensor(t) and t.dim() > 0]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--median", type=int, default=180)
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=16)
    a = p.parse_args()
    data = examples(a.examples, a.seq_length, a.median, a.sigma)
    tr = trainer(a.seq_length, a.micro_batch_size)
    results = {}
    for packing in (False, True):
        ds = SFTDataset(data, a.seq_length, packing)
        results[packing] = run_epoch(tr, ds, a.micro_batch_size, a.seq_length if packing else None, packing)
        print(f"{'packing' if packing else 'padding'}: {len(ds)} rows | {results[packing][0]:,.0f} trainable "
              f"tokens/s | {results[packing][1]:.1%} of computed positions are padding", flush=True)
    print(f"packing / padding throughput: {results[True][0] / results[False][0]:.2f}x", flush=True)

    with tempfile.TemporaryDirectory() as base:  # LoRA starts from a checkpoint of the same model
        full = trainer(a.seq_length, a.micro_batch_size, ["--save", base, "--bf16"])
        full.save()
        full.finish_save()
        lora = trainer(a.seq_length, a.micro_batch_size,
                       ["--load", base, "--finetune", "--bf16", "--lora-rank", a.lora_rank, "--lora-target",
                        "all-linear"])
        batch = collate_sft([SFTDataset(data, a.seq_length, True)[0]], pad_to=a.seq_length)
        for tr in (full, lora):  # Adam's moments exist from the first step on
            tr.train_step([{k: v.to(tr.device) for k, v in batch.items()}])
        n = sum(p.numel() for p in full.model.parameters())
        trainable = sum(p.numel() for p in lora.model.parameters() if p.requires_grad)
        if trainable == n:
            raise SystemExit("error: --lora-rank added no adapters; the memory comparison would measure nothing")
        f, l = state_bytes(full), state_bytes(lora)
        print(f"training state per rank ({n / 1e6:.2f}M parameters, {next(full.model.parameters()).dtype}): full "
              f"fine-tuning {f / 2**20:.1f} MiB | LoRA rank {a.lora_rank} ({trainable / 1e6:.3f}M trainable) "
              f"{l / 2**20:.1f} MiB | {f / l:.1f}x less")


if __name__ == "__main__":
    main()
