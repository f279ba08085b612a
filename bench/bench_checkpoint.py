"""How long training is blocked by a checkpoint save, synchronous vs --async-save, and how
long loading takes, for a model's full training state (weights, fp32 Adam moments).

    python bench/bench_checkpoint.py [--hidden 2048 --layers 8 --vocab 32000] [--dir /tmp/ckbench]

One process, fp32 (so weights are their own masters): builds the model, its gradient buffer
and optimizer (one Adam step, so the moments exist), then times
  sync:  save_checkpoint(...) until it returns (written, fsynced, checksummed, tracked);
  async: the blocking part (CPU snapshot, thread start), then the background write until done,
         for a first save and for a later one that reuses the first one's CPU buffers;
  load:  load_checkpoint(...) into a fresh model and optimizer (checksums verified).
Prints one line per measurement with GB/s over the checkpoint's bytes on disk.
"""

import argparse
import os
import shutil
import time

from megalite.checkpoint.layout import iteration_dir
from megalite.checkpoint.load import load_checkpoint
from megalite.checkpoint.save import save_checkpoint
from megalite.config import Config, ModelConfig
from megalite.model import GPTModel
from megalite.parallel import state
from megalite.parallel.data_parallel import GradBuffer
from megalite.training.optimizer import Optimizer


def build(cfg: Config):
    model = GPTModel(cfg.model)
    grads = GradBuffer(list(model.parameters()))
    optimizer = Optimizer(list(model.named_parameters()), grads, weight_decay=0.1)
    for p in model.parameters():
        p.main_grad.normal_()
    optimizer.set_lr(1e-4)
    optimizer.step()
    return model, optimizer


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dir", default="/tmp/megalite_ckpt_bench")
    a = p.parse_args()
    state.initialize()
    cfg = Config()
    cfg.model = ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                            ffn_hidden_size=4 * a.hidden, kv_channels=a.hidden // a.heads, num_query_groups=a.heads,
                            padded_vocab_size=a.vocab, max_position_embeddings=2048, hidden_dropout=0.0,
                            attention_dropout=0.0)
    model, optimizer = build(cfg)
    n = sum(q.numel() for q in model.parameters())
    shutil.rmtree(a.dir, ignore_errors=True)
    print(f"model: {n / 1e6:.0f}M parameters, fp32 weights + Adam moments ({12 * n / 1e9:.2f} GB of state)")

    t0 = time.perf_counter()
    save_checkpoint(a.dir, 1, model, optimizer, cfg, 0, 0)
    sync = time.perf_counter() - t0
    size = folder_bytes(iteration_dir(a.dir, 1))
    print(f"sync save: training blocked {sync:.2f} s ({size / sync / 1e9:.2f} GB/s)")

    buffers = {}
    for iteration, kind in ((2, "first"), (3, "later")):  # the later saves reuse the first one's CPU buffers
        t0 = time.perf_counter()
        pending = save_checkpoint(a.dir, iteration, model, optimizer, cfg, 0, 0, asynchronous=True,
                                  snapshot_buffers=buffers)
        blocked = time.perf_counter() - t0
        pending.finish()
        total = time.perf_counter() - t0
        print(f"async save ({kind}): training blocked {blocked:.2f} s ({blocked / sync:.2f} of sync), "
              f"written after {total:.2f} s")

    del model, optimizer
    model, optimizer = build(cfg)
    cfg.checkpoint.load = a.dir
    t0 = time.perf_counter()
    load_checkpoint(cfg, model, optimizer)
    load = time.perf_counter() - t0
    print(f"load: {load:.2f} s ({size / load / 1e9:.2f} GB/s), checksums verified")
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
