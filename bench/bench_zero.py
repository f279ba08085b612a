"""Training-state memory per rank: plain data parallelism, ZeRO-1 and ZeRO-3.

    python bench/bench_zero.py [--hidden 2048 --layers 22 --heads 32 --kv-heads 4 --ffn 5632 --vocab 32000]

Builds the model on the meta device (no memory), lays its parameters out in buckets exactly
as GradBuffer does, and prints for DP in 1..64 the bytes one rank keeps between steps in
bf16 mixed precision: parameters (2 B), the fp32 gradient buffer (4 B), fp32 master weights
and Adam's two moments (12 B, divided by DP with --use-distributed-optimizer; with
--zero-stage 2 the gradients too, and with --zero-stage 3 everything, whose buckets are the
model's layers). The default
shape is TinyLlama-1.1B's. tests/test_zero.py checks these numbers against what a real
run allocates.
"""

import argparse

import torch

from megalite.config import ModelConfig
from megalite.model import GPTModel
from megalite.parallel.memory import training_state_bytes
from megalite.parallel.zero import unit_layout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--bucket-size", type=int, default=40_000_000)
    a = p.parse_args()
    cfg = ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads, ffn_hidden_size=a.ffn,
                      kv_channels=a.hidden // a.heads, group_query_attention=True, num_query_groups=a.kv_heads,
                      normalization="RMSNorm", position_embedding_type="rope", swiglu=True, add_bias_linear=False,
                      untie_embeddings_and_output_weights=True, padded_vocab_size=a.vocab)
    with torch.device("meta"):
        model = GPTModel(cfg)
    numels = [q.numel() for q in reversed(list(model.parameters()))]
    unit_numels, ends = unit_layout([model], list(model.layers.values()))
    n = sum(numels)
    print(f"model: {n / 1e9:.3f}B parameters, bf16 parameters, fp32 gradients and optimizer state")
    print(f"{'DP':>4} | {'plain GiB':>9} | " + " | ".join(f"ZeRO-{z} GiB | B/param" for z in (1, 2, 3)))
    for dp in (1, 2, 4, 8, 16, 32, 64):
        plain = training_state_bytes(numels, dp, 0, 2, a.bucket_size)["total"]
        cells = []
        for stage in (1, 2, 3):
            layout = dict(numels=numels) if stage == 1 else dict(numels=unit_numels, ends=ends)
            worst = max(training_state_bytes(dp_size=dp, zero_stage=stage, param_bytes=2, bucket_size=a.bucket_size,
                                             dp_rank=r, **layout)["total"] for r in range(dp))
            cells.append(f"{worst / 2**30:>10.2f} | {worst / n:>7.2f}")
        print(f"{dp:>4} | {plain / 2**30:>9.2f} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
