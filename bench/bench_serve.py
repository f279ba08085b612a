"""Serving speed: megalite's continuous batching vs one request at a time vs transformers.generate.

    python bench/bench_serve.py [--clients 1 4 16] [--requests-per-client 2] [--max-tokens 32] [--threads 2]
                                [--rounds 3]

Builds a random ~20M-parameter Llama in transformers with a word-level tokenizer, serves the
folder with tools/serve.py (their own processes) on two loopback ports: with continuous
batching (--max-batch-size 16) and one request at a time (--max-batch-size 1); C clients then
each send their requests one after another, streamed, greedy. transformers answers the same
requests with ``generate`` behind a lock (one at a time; first-token time from a streamer).
The modes take turns for --rounds rounds (a busy spell of a shared machine then hits every
mode, not one) and each keeps its best round. Prints, per mode and number of clients, the
aggregate generated tokens/s, the p50 / p95 time to first token and request latency, and the
CPU time the decoding process spent per generated token (the server's, all its threads; on a
shared machine it varies less than wall-clock rates do), and checks every mode gave the same
greedy tokens. On CUDA when present.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 8192
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(folder: str) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return model


def prompts_for(n: int):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, VOCAB, (int(16 + 32 * i / max(n - 1, 1)),), generator=g).tolist() for i in range(n)]


def serve(folder: str, batch: int, threads: int):
    """tools/serve.py in its own process (so the clients here do not share its interpreter)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "serve.py"), "--load", folder, "--port",
                             str(port), "--max-batch-size", str(batch), "--max-model-len", "256", "--max-queue", "256"],
                            env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"error: tools/serve.py did not start (exit code {proc.poll()})") from None
            time.sleep(0.2)


def ask_server(url: str, max_tokens: int):
    def ask(prompt):
        t0, first, tokens = time.perf_counter(), None, []
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "logprobs": 0}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    if choice["logprobs"]:
                        first = first or time.perf_counter()
                        tokens += choice["logprobs"]["tokens"]
        return first - t0, time.perf_counter() - t0, tokens
    return ask


def ask_transformers(hf, max_tokens: int, device):
    lock = threading.Lock()

    class FirstToken:
        def __init__(self):
            self.calls, self.at = 0, None

        def put(self, _):
            self.calls += 1
            if self.calls == 2:  # the first call carries the prompt
                self.at = time.perf_counter()

        def end(self):
            pass

    def ask(text):
        t0, prompt = time.perf_counter(), [int(w[1:]) for w in text.split()]
        with lock, torch.no_grad():
            seen = FirstToken()
            out = hf.generate(torch.tensor([prompt], device=device), max_new_tokens=max_tokens, do_sample=False,
                              eos_token_id=2, pad_token_id=0, streamer=seen)[0, len(prompt):].tolist()
        return seen.at - t0, time.perf_counter() - t0, [f"w{i}" for i in out if i != 2]
    return ask


def cpu_seconds(pid=None) -> float:
    """User + system CPU seconds of process ``pid`` so far (this process when None; Linux)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(ask, prompts, clients: int, pid=None):
    """``clients`` threads share the prompts, each sending its requests one after another; ``pid``:
    the process that decodes (this one when None), whose CPU time per generated token is counted."""
    results = [None] * len(prompts)

    def client(c):
        for i in range(c, len(prompts), clients):
            results[i] = ask(" ".join(f"w{t}" for t in prompts[i]))

    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    tokens = sum(len(r[2]) for r in results)
    ttft, latency = sorted(r[0] for r in results), sorted(r[1] for r in results)
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    stats = {"tok/s": tokens / wall, "ttft_p50": statistics.median(ttft), "ttft_p95": p(ttft, 0.95),
             "lat_p50": statistics.median(latency), "lat_p95": p(latency, 0.95), "cpu_ms/tok": cpu * 1e3 / tokens}
    return stats, [r[2] for r in results]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; each mode's best is kept")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "hf")
        hf = make_model(folder).float().to(device).eval()
        servers = {name: serve(folder, batch, a.threads) for name, batch in (("megalite batched", 16),
                                                                             ("megalite 1-at-a-time", 1))}
        try:
            modes = {name: (ask_server(url, a.max_tokens), proc.pid) for name, (proc, url) in servers.items()}
            modes["transformers 1-at-a-time"] = (ask_transformers(hf, a.max_tokens, device), None)
            for ask, _ in modes.values():
                ask(" ".join(f"w{t}" for t in prompts_for(1)[0]))  # warm-up
            best, answers = {}, {}
            for _ in range(a.rounds):  # modes alternate, so a busy spell of the machine hits all of them
                for clients in a.clients:
                    prompts = prompts_for(clients * a.requests_per_client)
                    for name, (ask, pid) in modes.items():
                        stats, out = run(ask, prompts, clients, pid)
                        if (name, clients) not in best or stats["tok/s"] > best[name, clients]["tok/s"]:
                            best[name, clients] = stats
                        answers.setdefault(clients, {}).setdefault(name, out)
                        if answers[clients][name] != out:
                            answers[clients][name] = None  # a mode that answered differently in another round
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait()
    for name in modes:
        for clients in a.clients:
            stats = best[name, clients]
            print(f"{name:26s} clients {clients:2d}: {stats['tok/s']:7.1f} tok/s | TTFT p50 "
                  f"{stats['ttft_p50'] * 1e3:6.0f} ms p95 {stats['ttft_p95'] * 1e3:6.0f} ms | latency p50 "
                  f"{stats['lat_p50'] * 1e3:6.0f} ms p95 {stats['lat_p95'] * 1e3:6.0f} ms | decoding process CPU "
                  f"{stats['cpu_ms/tok']:5.1f} ms/token", flush=True)
    same = all(len({json.dumps(v) for v in per.values()}) == 1 for per in answers.values())
    top = max(a.clients)
    batched = best["megalite batched", top]["tok/s"]
    print(f"at {top} clients continuous batching is {batched / best['megalite 1-at-a-time', top]['tok/s']:.2f}x "
          f"megalite one at a time and {batched / best['transformers 1-at-a-time', top]['tok/s']:.2f}x transformers "
          f"one at a time (best of {a.rounds} alternating rounds); same greedy tokens in every mode and round: {same}")
    one = best["megalite 1-at-a-time", top]["cpu_ms/tok"]
    print(f"server CPU per generated token at {top} clients: {best['megalite batched', top]['cpu_ms/tok']:.1f} ms "
          f"batched, {one:.1f} ms one at a time")

if __name__ == "__main__":
    main()
