"""Exact and MinHash near-duplicate removal on a corpus with planted copies and near-copies
(a few words edited), across shards: recall and precision at FineWeb's 14 x 8 bands."""

import json
import random

import numpy as np
import pytest

from data_tools.clean.config import parse_config
from data_tools.clean.dedup.clusters import duplicates, pairs_of
from data_tools.clean.dedup.normalize import dedup_words
from data_tools.clean.executor import run_pipeline
from data_tools.sample_corpus import english_sentences, near_duplicate, news_article
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """300 articles, 100 near-copies (1-4 words edited), 30 exact copies, shuffled into 3
    shards. Returns (shard files, docs in reading order, expected removals per method)."""
    rng = random.Random(7)
    sents = english_sentences()
    docs = [{"id": f"a{i}", "text": news_article(rng, sents), "group": i} for i in range(300)]
    for k, i in enumerate(rng.sample(range(300), 100)):
        docs.append({"id": f"n{k}", "text": near_duplicate(rng, docs[i]["text"], rng.randint(1, 4)), "group": i})
    for k, i in enumerate(rng.sample(range(300), 30)):
        docs.append({"id": f"e{k}", "text": docs[i]["text"], "group": i})
    rng.shuffle(docs)
    folder = tmp_path_factory.mktemp("planted")
    files = [write_jsonl(folder / f"part{s}.jsonl", docs[s::3]) for s in range(3)]
    order = docs[0::3] + docs[1::3] + docs[2::3]  # the pipeline reads the shards in turn
    first_of_group, first_of_text = {}, {}
    near, exact = set(), set()
    for d in order:
        if d["group"] in first_of_group:
            near.add(d["id"])  # every later member of a planted group is a duplicate
        first_of_group.setdefault(d["group"], d["id"])
        key = " ".join(d["text"].lower().split())
        if key in first_of_text:
            exact.add(d["id"])
        first_of_text.setdefault(key, d["id"])
    return files, order, {"exact_dedup": exact, "minhash_dedup": near}


def removed_ids(out, label):
    ids = set()
    import glob
    import gzip

    for path in glob.glob(str(out / "rejected" / label / "*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            ids.update(json.loads(line)["id"] for line in f)
    return ids


@pytest.mark.parametrize("method", ["exact_dedup", "minhash_dedup"])
def test_planted_duplicates_found_across_shards(planted, tmp_path, method):
    files, _, expected = planted
    cfg = parse_config({"input": files, "output": str(tmp_path / "out"), "steps": [method]})
    run_pipeline(cfg)
    removed = removed_ids(tmp_path / "out", f"01-{method}")
    hits = len(removed & expected[method])
    recall, precision = hits / len(expected[method]), hits / max(len(removed), 1)
    assert recall >= 0.95 and precision >= 0.95, (method, recall, precision)
    if method == "exact_dedup":
        assert removed == expected[method]


def test_datasketch_lsh_agrees(planted):
    """datasketch's MinHash LSH with the same 14 x 8 bands on the same 5-gram shingles finds
    the same duplicates (an independent implementation of the band arithmetic)."""
    from datasketch import MinHash, MinHashLSH

    from data_tools.clean.dedup.minhash import MinHasher

    _, order, expected = planted
    ours_hasher = MinHasher()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    theirs, ours_keys = set(), []
    for d in order:
        ws = dedup_words(d["text"])
        m = MinHash(num_perm=112, seed=1)
        m.update_batch([b" ".join(ws[i:i + 5]) for i in range(len(ws) - 4)])
        if lsh.query(m):
            theirs.add(d["id"])
        lsh.insert(d["id"], m)
        ours_keys.append(ours_hasher.band_keys([d["text"]])[0])
    keys = np.stack(ours_keys)
    pairs = [pairs_of(keys[:, b], np.arange(len(order), dtype=np.uint64)) for b in range(keys.shape[1])]
    ours = {order[int(i)]["id"] for i in duplicates(pairs)[0]}
    for found in (ours, theirs):
        hits = len(found & expected["minhash_dedup"])
        assert hits / len(expected["minhash_dedup"]) >= 0.95 and hits / len(found) >= 0.95
    assert len(ours ^ theirs) <= 0.05 * len(expected["minhash_dedup"])


def test_clusters_keep_the_first_member():
    # a-b and b-c share keys (in different bands), d stands alone; c-e share a key
    pairs = [pairs_of(np.array([5, 5, 9, 7], np.uint64), np.array([10, 11, 12, 13], np.uint64)),
             pairs_of(np.array([1, 2, 1, 3, 2], np.uint64), np.array([11, 12, 12, 13, 14], np.uint64))]
    dups, sizes = duplicates(pairs)
    assert dups.tolist() == [11, 12, 14]  # 10 is kept for the cluster {10, 11, 12, 14}
    assert sorted(sizes.tolist()) == [4]
    assert duplicates([])[0].tolist() == []
