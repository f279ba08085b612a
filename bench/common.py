"""What several benchmarks share: a tokenizer trained on text that ships with CPython, and
the flags of a Llama-shaped megalite model.

Benchmarks run as scripts (`python bench/bench_x.py`); they put the repository root on
sys.path and import this module as `bench.common`.
"""

import os
import sys

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
