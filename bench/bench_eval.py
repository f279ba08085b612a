"""lm-eval throughput: megalite's harness model on a checkpoint vs lm-eval's own `hf` backend on
the same weights in HF form, same task, same requests.

    python bench/bench_eval.py [--limit 40] [--batch-size 8] [--task pydoc_next_sentence] [--threads 2]

Trains a 1k-piece sentencepiece tokenizer on CPython's pydoc topics, builds a random ~13M-
parameter Llama (4 layers, width 512) in transformers, imports it as a megalite checkpoint,
then runs the local task (examples/eval_tasks) with both backends, models already loaded and
warmed up (2 documents each), alternating for --rounds rounds, and prints one line each: the
best round's requests per second (loglikelihood requests, one per choice) and the accuracy
(equal when both score alike).
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import REPO, pydoc_hf_tokenizer  # noqa: E402


def build_models(tmp: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from megalite.data.tokenizer import build_tokenizer
    from megalite.hf.convert import import_hf

    hf_dir = pydoc_hf_tokenizer(os.path.join(tmp, "hf"), vocab_size=1000)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    import_hf(hf_dir, os.path.join(tmp, "ck"))
    return os.path.join(tmp, "ck"), hf_dir, build_tokenizer("HuggingFaceTokenizer", hf_dir)


def timed(lm, task: str, limit: int, manager):
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=manager, log_samples=True,
                          bootstrap_iters=0)
    seconds = time.perf_counter() - start
    requests = sum(len(s["resps"]) for s in out["samples"][task])
    return requests, seconds, out["results"][task]["acc,none"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pydoc_next_sentence")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from lm_eval.models.huggingface import HFLM

    from megalite.eval.harness import MegaliteLM, task_manager
    from megalite.eval.loading import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    manager = task_manager([a.task], os.path.join(REPO, "examples", "eval_tasks"))
    with tempfile.TemporaryDirectory() as tmp:
        ck, hf_dir, tok = build_models(tmp)
        model, _ = load_model(ck, torch.device(device))
        ours = MegaliteLM(model=model, tokenizer=tok, batch_size=a.batch_size)
        theirs = HFLM(pretrained=hf_dir, dtype="float32", device=device, batch_size=a.batch_size)
        backends = {"megalite": ours, "lm-eval hf": theirs}
        for lm in backends.values():
            timed(lm, a.task, 2, manager)
        best = {}
        for _ in range(a.rounds):
            for name, lm in backends.items():
                requests, seconds, acc = timed(lm, a.task, a.limit, manager)
                if name not in best or seconds < best[name][1]:
                    best[name] = (requests, seconds, acc)
        for name, (requests, seconds, acc) in best.items():
            print(f"bench_eval: {name:>10} | {device}, 13M Llama, {a.task}, {a.limit} docs, batch {a.batch_size} | "
                  f"{requests} requests in {seconds:.1f} s: {requests / seconds:.1f} requests/s | acc {acc:.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
