"""Continue a prompt with a trained checkpoint (greedy decoding).

    python tools/generate.py --load checkpoints/ --prompt "To be, or not to be" --max-new-tokens 50

The tokenizer is the one the checkpoint was trained with unless --tokenizer-* flags say otherwise.
"""

import argparse

from megalite.data.tokenizer import TOKENIZER_TYPES, build_tokenizer
from megalite.eval.generate import greedy_generate, load_model
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint folder (or one iter_XXXXXXX folder)")
    p.add_argument("--prompt", action="append", required=True, help="may be given several times")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model")
    p.add_argument("--vocab-file")
    p.add_argument("--merge-file")
    a = p.parse_args(argv)
    model, cfg = load_model(a.load)
    d = cfg.data
    tok = build_tokenizer(a.tokenizer_type or d.tokenizer_type, a.tokenizer_model or d.tokenizer_model,
                          a.vocab_file or d.vocab_file, a.merge_file or d.merge_file)
    for prompt in a.prompt:
        ids = tok.encode(prompt)
        out = greedy_generate(model, ids, a.max_new_tokens, eod=tok.eod)
        print(f"--- {prompt!r} ->")
        print(prompt + tok.decode(out[len(ids):]))


if __name__ == "__main__":
    run_tool(main)
