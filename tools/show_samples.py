"""Print decoded training samples exactly as the trainer will see them.

    python tools/show_samples.py --data-path data/my_text_document --seq-length 512 \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok/tokenizer.model

Builds (or loads from the cache) the GPT dataset indices for --data-path / --split, then shows
the first --num-samples samples of the chosen split, in training order.
"""

import argparse

from megalite.data.blended import build_gpt_datasets
from megalite.data.gpt_dataset import SPLIT_NAMES, GPTDatasetConfig
from megalite.data.tokenizer import add_tokenizer_args, build_tokenizer
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", nargs="+", required=True, help="PREFIX or WEIGHT PREFIX WEIGHT PREFIX ...")
    p.add_argument("--split", default="969,30,1")
    p.add_argument("--seq-length", type=int, required=True)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--data-cache-path", default=None)
    p.add_argument("--show-split", choices=SPLIT_NAMES, default="train")
    p.add_argument("--num-samples", type=int, default=3, help="samples to print")
    p.add_argument("--dataset-samples", type=int, default=None,
                   help="samples the split is built for (default: one epoch)")
    add_tokenizer_args(p)
    a = p.parse_args(argv)
    tok = build_tokenizer(a.tokenizer_type, a.tokenizer_model, a.vocab_file, a.merge_file)
    cfg = GPTDatasetConfig(seq_length=a.seq_length, seed=a.seed, split=a.split,
                           data_cache_path=a.data_cache_path, eod_id=tok.eod)
    wanted = [a.dataset_samples if s == a.show_split else 0 for s in SPLIT_NAMES]
    ds = build_gpt_datasets(a.data_path, wanted, cfg)[SPLIT_NAMES.index(a.show_split)]
    if ds is None:
        print(f"the {a.show_split} split is empty for --split {a.split}")
        return 1
    print(f"{a.show_split}: {len(ds)} samples of {a.seq_length} tokens")
    for i in range(min(a.num_samples, len(ds))):
        tokens = ds[i]["tokens"]
        print(f"--- sample {i} ({len(tokens)} tokens) ---")
        print(tok.decode(tokens.tolist()))
    return 0


if __name__ == "__main__":
    run_tool(main)
