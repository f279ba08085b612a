"""Preprocessing throughput with 1 and 2 workers on >= 50 MB of real English text.

    python bench/bench_preprocess.py [--mb 50] [--repeats 2]

Builds the corpus by shuffling the paragraphs of the public-domain demo texts (Shakespeare,
Milton) into new ~6 KB documents until it holds --mb megabytes, trains a 4k-vocab
sentencepiece BPE on it, then times tools/preprocess_data.py's pipeline (pool start-up and
file finalisation included) with 1 and 2 workers, alternating, best of --repeats each.
Prints one line; the 1- and 2-worker outputs must be byte-identical.
"""

import argparse
import filecmp
import json
import os
import random
import sys

from megalite.data.demo_corpus import load_texts
from megalite.data.preprocess import PreprocessConfig, TokenizerSpec, preprocess

WORK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench", "preprocess")


def build_corpus(path: str, megabytes: float, seed: int = 0) -> int:
    _, texts = load_texts(os.path.join(WORK, "download"))
    paragraphs = [p.strip() for _, t in texts for p in t.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    target, written, n_docs = int(megabytes * 1e6), 0, 0
    with open(path, "w") as f:
        while written < target:
            rng.shuffle(paragraphs)
            doc, size = [], 0
            for p in paragraphs:
                doc.append(p)
                size += len(p) + 2
                if size >= 6000:
                    line = json.dumps({"text": "\n\n".join(doc)}) + "\n"
                    f.write(line)
                    written += len(line)
                    n_docs += 1
                    doc, size = [], 0
                    if written >= target:
                        break
    return n_docs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    os.makedirs(WORK, exist_ok=True)
    corpus = os.path.join(WORK, f"corpus_{a.mb:g}mb.jsonl")
    if not os.path.exists(corpus):
        build_corpus(corpus, a.mb)
    model = os.path.join(WORK, "tok", "tokenizer.model")
    if not os.path.exists(model):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from data_tools.train_tokenizer import train_tokenizer

        train_tokenizer([corpus], os.path.join(WORK, "tok"), 4096, max_input_bytes=20_000_000)
    spec = TokenizerSpec("SentencePieceTokenizer", model)
    best = {}
    for _ in range(a.repeats):
        for workers in (1, 2):
            s = preprocess(PreprocessConfig([corpus], os.path.join(WORK, f"out{workers}"), spec,
                                            append_eod=True, workers=workers, log_interval=1e9))
            best[workers] = max(best.get(workers, 0.0), s.tokens_per_sec)
    same = all(filecmp.cmp(os.path.join(WORK, f"out1_text_document{x}"),
                           os.path.join(WORK, f"out2_text_document{x}"), shallow=False) for x in (".bin", ".idx"))
    size_mb = os.path.getsize(corpus) / 1e6
    print(f"bench_preprocess: corpus {size_mb:.1f} MB, {s.documents} docs, {s.tokens / 1e6:.1f}M tokens, "
          f"vocab 4096 | 1 worker {best[1] / 1e6:.2f}M tok/s | 2 workers {best[2] / 1e6:.2f}M tok/s | "
          f"speedup {best[2] / best[1]:.2f}x | outputs identical: {same}")


if __name__ == "__main__":
    main()
