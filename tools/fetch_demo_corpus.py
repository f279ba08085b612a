"""Write the public-domain demo corpus (Shakespeare and Milton) as JSONL documents.

    python tools/fetch_demo_corpus.py --output corpus.jsonl [--cache-dir .cache]
"""

import argparse
import json
import os

from megalite.data.demo_corpus import load_texts, split_documents
from megalite.utils.atomic import atomic_write
from megalite.utils.cli import run_tool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--cache-dir", default=None, help="where the sdist is kept (default: next to --output)")
    a = p.parse_args(argv)
    cache = a.cache_dir or os.path.join(os.path.dirname(os.path.abspath(a.output)), "download")
    source, texts = load_texts(cache)
    docs = split_documents(texts)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with atomic_write(a.output, "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}) + "\n")
    print(f"{source}: {len(texts)} texts, {len(docs)} documents, "
          f"{sum(map(len, docs)) / 1e6:.1f}M characters -> {a.output}")


if __name__ == "__main__":
    run_tool(main)
