"""Training-state memory per rank with and without the distributed optimizer (ZeRO-1).

    python bench/bench_zero.py [--hidden 2048 --layers 22 --heads 32 --kv-heads 4 --ffn 5632 --vocab 32000]

Builds the model on the meta device (no memory), lays its parameters out in buckets exactly
as GradBuffer does, and prints for DP in 1..64 the bytes one rank keeps between steps in
bf16 mixed precision: parameters (2 B), the fp32 gradient buffer (4 B), fp32 master weights
and Adam's two moments (12 B, divided by DP with --use-distributed-optimizer). The default
shape is TinyLlama-1.1B's. tests/test_zero.py checks these numbers against what a real
run allocates.
"""

import argparse

import torch

from megalite.config import ModelConfig
from megalite.model import GPTModel
from megalite.utils.memory import training_state_bytes


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
    n = sum(numels)
    print(f"model: {n / 1e9:.3f}B parameters, bf16 parameters, fp32 gradients and optimizer state")
    print(f"{'DP':>4} | {'plain GiB/rank':>14} | {'ZeRO-1 GiB/rank':>15} | {'ZeRO-1 bytes/param':>18} | ratio")
    for dp in (1, 2, 4, 8, 16, 32, 64):
        plain = training_state_bytes(numels, dp, False, 2, a.bucket_size)["total"]
        zero = max(training_state_bytes(numels, dp, True, 2, a.bucket_size, r)["total"] for r in range(dp))
        print(f"{dp:>4} | {plain / 2**30:>14.2f} | {zero / 2**30:>15.2f} | {zero / n:>18.2f} | {zero / plain:.3f}")


if __name__ == "__main__":
    main()
