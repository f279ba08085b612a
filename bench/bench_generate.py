"""Generation speed: megalite's KV-cache generator vs transformers.generate, same weights.

    python bench/bench_generate.py [--batch 4] [--new-tokens 64] [--threads 2]

Builds a random ~20M-parameter Llama in transformers, imports it with
tools/convert_checkpoint.py's code, then times greedy decoding of --new-tokens tokens for
--batch prompts of 32 tokens with both (best of --rounds alternating rounds), on CUDA when
present. Checks both produced the same tokens and prints one line.
"""

import argparse
import os
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megalite.eval.generate import generate
from megalite.eval.loading import load_model
from megalite.eval.sampling import Sampling
from megalite.hf.convert import import_hf


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        LlamaForCausalLM(cfg).save_pretrained(os.path.join(tmp, "hf"))
        import_hf(os.path.join(tmp, "hf"), os.path.join(tmp, "ck"))
        ours, _ = load_model(os.path.join(tmp, "ck"), device)
        hf = LlamaForCausalLM.from_pretrained(os.path.join(tmp, "hf")).float().to(device).eval()
    prompts = torch.randint(0, 8192, (a.batch, 32), generator=torch.Generator().manual_seed(1))

    def run_ours():
        return generate(ours, prompts.tolist(), a.new_tokens, Sampling())

    @torch.no_grad()
    def run_hf():
        out = hf.generate(prompts.to(device), max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                          do_sample=False, pad_token_id=0)
        return out[:, 32:].tolist()

    same = run_ours() == run_hf()
    best = {"megalite": float("inf"), "transformers": float("inf")}
    for _ in range(a.rounds):
        for name, fn in (("megalite", run_ours), ("transformers", run_hf)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    tps = {k: a.batch * a.new_tokens / v for k, v in best.items()}
    print(f"bench_generate: {device.type}, 20M Llama, batch {a.batch}, prompt 32, {a.new_tokens} new tokens, greedy | "
          f"megalite {tps['megalite']:.0f} tok/s | transformers {tps['transformers']:.0f} tok/s | "
          f"ratio {tps['megalite'] / tps['transformers']:.2f}x | same tokens: {same}")


if __name__ == "__main__":
    main()
