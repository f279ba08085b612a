"""Join several .bin/.idx pairs (e.g. the parts of a --world-size preprocessing run) into one.

    python tools/merge_datasets.py --input data/parts --output-prefix data/all_text_document

takes every pair in the folder in name order (or the prefixes given with --prefixes).
"""

import argparse
import glob
import os

from megalite.data.indexed import IndexedDataset, IndexedDatasetBuilder, exists
from megalite.errors import MegaliteError
from megalite.utils.cli import run_tool


def find_prefixes(folder: str):
    if not os.path.isdir(folder):
        raise MegaliteError(f"--input {folder}: not a folder")
    prefixes = sorted(p[: -len(".idx")] for p in glob.glob(os.path.join(folder, "*.idx")))
    for p in prefixes:
        if not exists(p):
            raise MegaliteError(f"{p}.idx has no matching {p}.bin")
    if not prefixes:
        raise MegaliteError(f"--input {folder}: no .idx files")
    return prefixes


def merge(prefixes, output_prefix: str) -> IndexedDataset:
    if output_prefix in prefixes:
        raise MegaliteError(f"--output-prefix {output_prefix} is also an input")
    dtype = IndexedDataset(prefixes[0]).dtype
    with IndexedDatasetBuilder(output_prefix, dtype) as builder:
        for p in prefixes:
            builder.add_index(p)
    return IndexedDataset(output_prefix)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder holding the .bin/.idx pairs to merge")
    src.add_argument("--prefixes", nargs="+", help="explicit path prefixes, merged in this order")
    p.add_argument("--output-prefix", required=True)
    a = p.parse_args(argv)
    prefixes = a.prefixes or find_prefixes(a.input)
    out = merge(prefixes, a.output_prefix)
    print(f"merged {len(prefixes)} datasets: {out.num_documents} documents, {out.num_tokens} tokens "
          f"-> {a.output_prefix}.bin/.idx")


if __name__ == "__main__":
    run_tool(main)
