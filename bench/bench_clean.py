"""Cleaning throughput per core: FineWeb's four quality filters, and MinHash signatures.

    python bench/bench_clean.py [--docs 20000]
    PYTHONPATH=. /path/to/env-with-datatrove/bin/python bench/bench_clean.py --datatrove [--docs 2000]
    python bench/bench_clean.py --realworld [--docs 3000]     # needs spaCy (the dev extra)

Builds --docs news-length web documents (data_tools/sample_corpus.py: articles of real
English sentences with names and figures, plus copies, near-copies, boilerplate, spam and
other-language pages), then times, in this one process, the Gopher repetition, Gopher
quality, C4 and FineWeb filters in a row on every document, and MinHash signatures (5-grams,
14 bands x 8 rows) of every document. Rates are documents per CPU-second of this process,
i.e. per core. Prints one line and saves the decisions to .bench/clean/decisions.jsonl.

--realworld times the four filters on tests/clean_corpus.py's web-text patterns (figures,
currency, quotes, URLs, code, other languages: many distinct words, so the word splitter,
which runs once per distinct whitespace-separated piece, costs most there), with empty
caches as a fresh process meets them.

--datatrove times datatrove's own filters and signatures on the first --docs documents of
the saved corpus, in an environment that has datatrove and spaCy, and reports how many keep /
remove decisions agree with ours.
"""

import argparse
import json
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, ".bench", "clean")
CORPUS = os.path.join(WORK, "corpus.jsonl")
DECISIONS = os.path.join(WORK, "decisions.jsonl")


def build_corpus(n_docs: int, seed: int = 0) -> None:
    from data_tools.sample_corpus import web_corpus

    os.makedirs(WORK, exist_ok=True)
    with open(CORPUS, "w") as f:
        for d in web_corpus(random.Random(seed), n_docs):
            f.write(json.dumps(d) + "\n")


def load(n_docs: int):
    with open(CORPUS) as f:
        docs = [json.loads(line) for _, line in zip(range(n_docs), f)]
    if len(docs) < n_docs:
        raise SystemExit(f"{CORPUS} holds {len(docs)} documents; run without --datatrove first")
    return docs


def cpu_rate(n: int, fn) -> float:
    start = time.process_time()
    fn()
    return n / (time.process_time() - start)


def ours(docs):
    from data_tools.clean.document import Document
    from data_tools.clean.steps import build_step

    filters = [build_step(n, {}) for n in ("gopher_repetition", "gopher_quality", "c4", "fineweb")]
    minhash = build_step("minhash_dedup", {})
    warm = [Document(dict(d), "text", d["id"]) for d in docs[:500]]
    for doc in warm:  # fill the per-process caches once, as a long-running task has them filled
        for f in filters:
            if f.process(doc):
                break
    minhash.band_keys([d["text"] for d in docs[:500]])
    decisions = []

    def run_filters():  # documents come and go as in the pipeline, which holds one batch at a time
        for d in docs:
            doc = Document(dict(d), "text", d["id"])
            for f in filters:
                reason = f.process(doc)
                if reason:
                    decisions.append(f"{f.name}:{reason}")
                    break
            else:
                decisions.append(None)

    filter_rate = cpu_rate(len(docs), run_filters)
    texts = [d["text"] for d in docs]
    minhash_rate = cpu_rate(len(docs), lambda: minhash.band_keys(texts))
    with open(DECISIONS, "w") as f:
        for d, v in zip(docs, decisions):
            f.write(json.dumps({"id": d["id"], "decision": v}) + "\n")
    kept = sum(v is None for v in decisions)
    size = sum(len(t) for t in texts) / len(texts)
    print(f"bench_clean: {len(docs)} docs, mean {size / 1000:.1f} KB, {kept} kept by the filters | "
          f"4 quality filters {filter_rate:,.0f} docs/s per core | MinHash signatures (5-grams, 14x8) "
          f"{minhash_rate:,.0f} docs/s per core")


def realworld(n_docs: int) -> None:
    from data_tools.clean.document import Document
    from data_tools.clean.steps import build_step

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from clean_corpus import realworld_corpus

    texts = realworld_corpus(n_docs)
    filters = [build_step(n, {}) for n in ("gopher_repetition", "gopher_quality", "c4", "fineweb")]

    def run_filters():
        for i, text in enumerate(texts):
            doc = Document({"text": text}, "text", str(i))
            for f in filters:
                if f.process(doc):
                    break

    rate = cpu_rate(len(texts), run_filters)
    size = sum(map(len, texts)) / len(texts)
    print(f"bench_clean --realworld: {len(texts)} docs, mean {size / 1000:.1f} KB, "
          f"{len(set(' '.join(texts).split())):,} distinct pieces | 4 quality filters {rate:,.0f} docs/s per core")


def theirs(docs):
    import tempfile

    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.hashing import HashConfig

    filters = [("gopher_repetition", GopherRepetitionFilter()), ("gopher_quality", GopherQualityFilter()),
               ("c4", C4QualityFilter(filter_no_terminal_punct=False)), ("fineweb", FineWebQualityFilter())]
    # FineWeb's setting: 5-grams, 14 x 8, 64-bit sha1
    config = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))
    signer = MinhashDedupSignature(tempfile.mkdtemp(), config)
    batch = [Document(text=d["text"], id=d["id"]) for d in docs]
    decisions = []

    def run_filters():
        for doc in batch:
            for name, f in filters:
                r = f.filter(doc)
                if r is not True:
                    decisions.append(f"{name}:{r[1] if isinstance(r, tuple) else ''}")
                    break
            else:
                decisions.append(None)

    filter_rate = cpu_rate(len(docs), run_filters)
    minhash_rate = cpu_rate(len(docs), lambda: [signer.get_signature(s) for s in
                                                (signer.get_shingles(d["text"]) for d in docs) if len(s)])
    with open(DECISIONS) as f:
        mine = [json.loads(line)["decision"] for _, line in zip(range(len(docs)), f)]
    same = sum((a is None) == (b is None) for a, b in zip(mine, decisions))
    same_reason = sum(a == b for a, b in zip(mine, decisions))
    print(f"bench_clean --datatrove: {len(docs)} docs | datatrove 4 quality filters {filter_rate:,.0f} docs/s per "
          f"core | MinHash signatures {minhash_rate:,.0f} docs/s per core | keep/remove decisions equal to "
          f"megalite's on {same}/{len(docs)} ({same / len(docs):.2%}), same reason on {same_reason}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=None,
                   help="documents (default 20000; 2000 with --datatrove, 3000 with --realworld)")
    p.add_argument("--datatrove", action="store_true", help="time datatrove's filters on the saved corpus")
    p.add_argument("--realworld", action="store_true", help="time our filters on tests/clean_corpus.py's documents")
    a = p.parse_args()
    sys.path.insert(0, REPO)
    if a.realworld:
        realworld(a.docs or 3000)
        return
    if a.datatrove:
        theirs(load(a.docs or 2000))
        return
    n = a.docs or 20000
    if not os.path.exists(CORPUS) or sum(1 for _ in open(CORPUS)) < n:
        build_corpus(n)
    ours(load(n))


if __name__ == "__main__":
    main()
