"""What several benchmarks share: a tokenizer trained on text that ships with CPython, the
flags of a Llama-shaped megalite model, and for comparisons against another library (bench_dpo,
bench_rl): the model-size flags, each side run in a fresh process, the fastest of its rounds, and how
a side reads its clocks and its peak memory.

Benchmarks run as scripts (`python bench/bench_x.py`); they put the repository root on
sys.path and import this module as `bench.common`.
"""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def pydoc_hf_tokenizer(folder: str, vocab_size: int = 1000) -> str:
    """A sentencepiece BPE tokenizer trained on CPython's pydoc topics, written as a Hugging
    Face tokenizer into ``folder`` (which both transformers and megalite load); returns ``folder``."""
    from data_tools.train_tokenizer import train_tokenizer
    from megalite.data.tokenizer import build_tokenizer
    from megalite.hf.tokenizer import export_tokenizer
    from tests.conftest import english_documents, write_jsonl

    os.makedirs(folder, exist_ok=True)
    corpus = write_jsonl(os.path.join(folder, "pydoc.jsonl"), [{"text": d} for d in english_documents()])
    spm = train_tokenizer([corpus], os.path.join(folder, "spm"), vocab_size=vocab_size)
    export_tokenizer(build_tokenizer("SentencePieceTokenizer", spm), folder)
    return folder


def llama_flags(layers: int, hidden: int, heads: int, kv_heads: int, vocab_size: int = None, ffn: int = None):
    """megalite flags of a Llama-shaped model (RMSNorm, RoPE, SwiGLU, grouped-query attention,
    no biases, untied output layer, no dropout); ``vocab_size`` only where no tokenizer sets it."""
    flags = ["--num-layers", layers, "--hidden-size", hidden, "--num-attention-heads", heads, "--group-query-attention",
             "--num-query-groups", kv_heads, "--normalization", "RMSNorm", "--position-embedding-type", "rope",
             "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--hidden-dropout", 0,
             "--attention-dropout", 0, "--make-vocab-size-divisible-by", 1]
    if vocab_size is not None:
        flags += ["--vocab-size", vocab_size]
    if ffn is not None:
        flags += ["--ffn-hidden-size", ffn]
    return flags


def clock():
    """(wall seconds, this process's CPU seconds over all its threads): on a shared machine the CPU
    time of a step varies less than its wall time."""
    return time.perf_counter(), time.process_time()


class Memory:
    """Peak memory of this process from now on: CUDA peak allocated bytes, or on CPU the
    resident-set high-water mark (reset here through /proc/self/clear_refs) minus the resident
    set now."""

    def __init__(self, device):
        import gc

        import torch

        gc.collect()
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._status("VmRSS")

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    def peak(self) -> int:
        import torch

        return (torch.cuda.max_memory_allocated() if self.cuda else self._status("VmHWM")) - self.base


def add_size_flags(p, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab_size: int = 4000) -> None:
    """The model-size flags of a comparison's random Llama (argparse parser ``p``)."""
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--hidden-size", type=int, default=hidden)
    p.add_argument("--heads", type=int, default=heads)
    p.add_argument("--kv-heads", type=int, default=kv_heads)
    p.add_argument("--ffn-hidden-size", type=int, default=ffn)
    p.add_argument("--vocab-size", type=int, default=vocab_size, help="sentencepiece pieces (pydoc topics)")


def run_worker(script: str, flags: list, what: str) -> dict:
    """Run ``script`` with ``flags`` in a fresh Python (its own memory high-water mark) and return the
    JSON it printed on its last ``RESULT `` line."""
    import json
    import subprocess

    proc = subprocess.run([sys.executable, os.path.abspath(script), *flags], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: the {what} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def keep_fastest(results: dict, side: str, run: dict, rate: str) -> None:
    """``results[side]``: the run of ``side`` with the highest ``rate`` so far, with every run's rate in
    ``rounds_<rate>``."""
    best = results.setdefault(side, {**run, f"rounds_{rate}": []})
    best[f"rounds_{rate}"].append(run[rate])
    if run[rate] > best[rate]:
        best.update(run)

