"""Training throughput on CPU: megalite's train step vs transformers' LlamaForCausalLM.

    python bench/bench_train_cpu.py [--steps 8] [--rounds 2] [--threads 2]

Same Llama-style architecture (RMSNorm, RoPE, SwiGLU, GQA, untied embeddings, no biases),
same batch, same thread count, fp32, one full step each (forward, backward, global-norm
clip at 1.0, AdamW). megalite runs its real Trainer.train_step; transformers runs the usual
loop with torch's AdamW. Timed rounds alternate between the two; the best round counts.
Prints one line.
"""

import argparse
import time

import torch

from megalite.config import parse_config, validate
from megalite.training.data import microbatches
from megalite.training.trainer import Trainer

ARCH = dict(layers=4, hidden=512, heads=8, kv_heads=4, ffn=1408, vocab=8192, seq=256, batch=8)


def megalite_step_fn(lr=1e-4):
    a = ARCH
    argv = [
        "--num-layers", a["layers"], "--hidden-size", a["hidden"], "--num-attention-heads", a["heads"],
        "--group-query-attention", "--num-query-groups", a["kv_heads"], "--ffn-hidden-size", a["ffn"],
        "--normalization", "RMSNorm", "--position-embedding-type", "rope", "--swiglu", "--disable-bias-linear",
        "--untie-embeddings-and-output-weights", "--hidden-dropout", 0, "--attention-dropout", 0,
        "--seq-length", a["seq"], "--mock-data", "--vocab-size", a["vocab"], "--make-vocab-size-divisible-by", 1,
        "--micro-batch-size", a["batch"], "--global-batch-size", a["batch"], "--train-iters", 1000,
        "--lr", lr, "--lr-decay-style", "constant", "--clip-grad", 1.0, "--num-workers", 0, "--eval-iters", 0,
    ]
    trainer = Trainer(validate(parse_config([str(x) for x in argv])), torch.device("cpu"))
    batch = microbatches(trainer.train_iter, 1, trainer.device)
    n = sum(p.numel() for p in trainer.model.parameters())
    return (lambda: trainer.train_step(batch)["lm_loss"]), n, batch[0]["tokens"]


def hf_step_fn(tokens, lr=1e-4):
    from transformers import LlamaConfig, LlamaForCausalLM

    a = ARCH
    cfg = LlamaConfig(vocab_size=a["vocab"], hidden_size=a["hidden"], intermediate_size=a["ffn"],
                      num_hidden_layers=a["layers"], num_attention_heads=a["heads"], num_key_value_heads=a["kv_heads"],
                      max_position_embeddings=a["seq"], rms_norm_eps=1e-5, tie_word_embeddings=False,
                      attention_dropout=0.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    n = sum(p.numel() for p in model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    return step, n


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ours, n_ours, tokens = megalite_step_fn()
    theirs, n_hf = hf_step_fn(tokens)
    assert n_ours == n_hf, (n_ours, n_hf)
    best = {"megalite": float("inf"), "transformers": float("inf")}
    for _ in range(a.rounds):
        best["megalite"] = min(best["megalite"], time_steps(ours, a.steps))
        best["transformers"] = min(best["transformers"], time_steps(theirs, a.steps))
    tokens_per_step = ARCH["batch"] * ARCH["seq"]
    tps = {k: tokens_per_step / v for k, v in best.items()}
    print(f"bench_train_cpu: {n_ours / 1e6:.1f}M params, batch {ARCH['batch']} x {ARCH['seq']}, fp32, "
          f"{a.threads} threads | megalite {tps['megalite']:.0f} tok/s | transformers {tps['transformers']:.0f} tok/s "
          f"| ratio {tps['megalite'] / tps['transformers']:.2f}x")


if __name__ == "__main__":
    main()
