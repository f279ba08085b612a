"""Tokenize JSONL / parquet / `datasets` corpora into Megatron .bin/.idx files.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/my \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok/tokenizer.model \
        --append-eod --workers 8

writes data/my_text_document.{bin,idx}. See docs/data.md.
"""

import argparse

from megalite.data.preprocess import MAX_LINE_BYTES, PreprocessConfig, TokenizerSpec, preprocess
from megalite.data.tokenizer import add_tokenizer_args
from megalite.utils.cli import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--input", required=True, nargs="+",
                   help="JSONL (.jsonl/.json, .gz, .zst), parquet, a folder or glob of them, "
                        "or a folder written by datasets' save_to_disk")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize, one output each")
    g.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    g.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES,
                   help="a longer JSONL line (or .txt file) is a bad record, skipped and listed (--strict: an "
                        "error), never read whole: tokenizing takes ~45x its size in memory; 0 = no limit "
                        "(default %(default)s, 8 MiB)")
    g.add_argument("--rank", type=int, default=0, help="process records i with i %% world-size == rank")
    g.add_argument("--world-size", type=int, default=1, help="number of parts the input is split into")
    add_tokenizer_args(p)
    p.add_argument("--append-eod", action="store_true", help="append the end-of-document token")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    g.add_argument("--allow-empty", action="store_true",
                   help="write the output even when no document is left (by default that is an error and "
                        "files already at the prefix are kept)")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes (one core each)")
    g.add_argument("--log-interval", type=float, default=10.0,
                   help="seconds between progress lines when not on a terminal")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    summary = preprocess(PreprocessConfig(
        inputs=a.input, output_prefix=a.output_prefix,
        tokenizer=TokenizerSpec(a.tokenizer_type, a.tokenizer_model, a.vocab_file, a.merge_file),
        json_keys=a.json_keys, append_eod=a.append_eod, workers=a.workers, rank=a.rank,
        world_size=a.world_size, strict=a.strict, log_interval=a.log_interval,
        max_line_bytes=a.max_line_bytes, allow_empty=a.allow_empty,
    ))
    print("\n".join(summary.lines()))


if __name__ == "__main__":
    run_tool(main)
