"""Tokenize SFT data into megalite's example cache ahead of training.

    python tools/preprocess_sft.py --sft-data "0.7 a.jsonl 0.3 b.jsonl" --seq-length 2048 \
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model hf_tok/ --chat-template qwen --workers 8

Builds (or finds) the cache entry of every --sft-data and --sft-valid-data source, exactly as
training with the same flags would, so the run starts without tokenizing. See docs/sft.md.
"""

import argparse
import dataclasses

from megalite.config import ChatConfig, SFTConfig, add_section_args
from megalite.data.sft_examples import load_sources
from megalite.data.tokenizer import add_tokenizer_args, build_tokenizer
from megalite.errors import MegaliteError
from megalite.utils.cli import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_section_args(p.add_argument_group("sft data"), SFTConfig)
    add_section_args(p.add_argument_group("chat"), ChatConfig)
    p.add_argument("--seq-length", type=int, required=True, help="tokens per training row (examples keep "
                                                                  "at most seq-length + 1 ids)")
    add_tokenizer_args(p)
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (one core each)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    cfg = SFTConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(SFTConfig) if hasattr(a, f.name)})
    if not cfg.sft_data:
        raise MegaliteError("--sft-data is required")
    if a.workers < 1:
        raise MegaliteError(f"--workers {a.workers} must be at least 1")
    tok = build_tokenizer(a.tokenizer_type, a.tokenizer_model, a.vocab_file, a.merge_file)
    for spec, flag in ((cfg.sft_data, "--sft-data"), (cfg.sft_valid_data, "--sft-valid-data")):
        if spec:
            for store in load_sources(cfg, spec, flag, a.seq_length, tok, a.workers,
                                      getattr(a, "chat_template", None))[1]:
                s = store.stats
                print(f"{store.name}: {s['examples']} examples, {s['truncated']} truncated, {s['dropped']} dropped "
                      f"(no trainable token), {store.tokens.num_tokens} tokens -> {store.prefix}"
                      f"{'' if store.built else ' (cached)'}")


if __name__ == "__main__":
    run_tool(main)
