"""Write the SFT demo set (megalite.data.demo_sft: questions and answers from the Python
language reference that ships with CPython) as alpaca JSONL, split into train and valid files;
with --preference, the DPO pairs for the same questions (trl's conversational format).

    python tools/make_sft_demo_data.py --output-dir .demo/sft [--valid-every 10] [--preference [--rejected mismatched]]
"""

import argparse
import json
import os

from megalite.data.demo_sft import REJECTED, instruction_pairs, preference_pairs
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--valid-every", type=int, default=10, help="every Nth record goes to valid.jsonl")
    p.add_argument("--preference", action="store_true", help="DPO pairs: chosen = the true next paragraph, "
                                                             "rejected = a corrupted or mismatched one")
    p.add_argument("--rejected", choices=REJECTED, default="shuffled",
                   help="with --preference: the true paragraph's words shuffled, or a paragraph of another section")
    a = p.parse_args(argv)
    os.makedirs(a.output_dir, exist_ok=True)
    records = preference_pairs(rejected=a.rejected) if a.preference else instruction_pairs()
    counts = {"train": 0, "valid": 0}
    with open(os.path.join(a.output_dir, "train.jsonl"), "w") as train, \
            open(os.path.join(a.output_dir, "valid.jsonl"), "w") as valid:
        for i, r in enumerate(records):
            split = "valid" if i % a.valid_every == a.valid_every - 1 else "train"
            (valid if split == "valid" else train).write(json.dumps(r) + "\n")
            counts[split] += 1
    print(f"{counts['train']} train and {counts['valid']} valid records in {a.output_dir}")


if __name__ == "__main__":
    run_tool(main)
