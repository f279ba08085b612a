import os
import time

import numpy as np
import pytest

from megalite.data.blended import blending_indices, build_gpt_datasets, parse_data_path
from megalite.data.gpt_dataset import GPTDataset, GPTDatasetConfig, build_indices, parse_split, split_ranges
from megalite.data.helpers import build_sample_index
from megalite.data.indexed import IndexedDataset, IndexedDatasetBuilder
from megalite.data.sampler import PretrainingSampler
from megalite.errors import MegaliteError
from tests import reference_index as ref


def make_dataset(prefix, n_docs, seed=0, max_len=40, vocab=500):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=int(rng.integers(0, max_len))) for _ in range(n_docs)]
    with IndexedDatasetBuilder(str(prefix), np.uint16) as b:
        for d in docs:
            b.add_item(d)
            b.end_document()
    return IndexedDataset(str(prefix)), docs


CONFIGS = [  # (n_docs, seq_length, drop_last, extra)
    (1, 7, True, 1),
    (13, 5, True, 1),
    (13, 5, False, 1),
    (40, 16, True, 0),
    (40, 16, False, 0),
    (200, 64, True, 1),
    (57, 3, False, 1),
]


@pytest.mark.parametrize("n_docs, seq, drop_last, extra", CONFIGS)
def test_sample_index_matches_reference(n_docs, seq, drop_last, extra):
    rng = np.random.default_rng(n_docs * seq)
    sizes = rng.integers(0, 30, size=n_docs).astype(np.int32)
    sizes[rng.integers(0, n_docs)] = 25  # never all empty
    epochs = 3
    document_index = np.concatenate([rng.permutation(n_docs) for _ in range(epochs)]).astype(np.int32)
    got = build_sample_index(sizes, document_index, seq, drop_last, extra)
    starts = np.concatenate([[0], np.cumsum(sizes[document_index])])
    positions = starts[got[:, 0]] + got[:, 1]
    assert positions.tolist() == ref.sample_starts(sizes, document_index, seq, drop_last, extra)


@pytest.mark.parametrize("seed", range(4))
def test_dataset_samples_match_reference_stream(tmp_path, seed):
    """Several epochs: every sample equals its slice of the epoch-shuffled token stream."""
    ds, docs = make_dataset(tmp_path / "d", 30, seed)
    rng = np.random.default_rng(seed)
    seq = int(rng.integers(4, 50))
    tokens = sum(len(d) for d in docs)
    num_samples = int(tokens * rng.uniform(1.5, 4.0) / seq)  # forces several epochs
    cfg = GPTDatasetConfig(seq_length=seq, seed=seed, data_cache_path=str(tmp_path / "cache"))
    gpt = GPTDataset(ds, "train", (0, 30), num_samples, cfg)
    epochs = len(gpt.document_index) // 30
    assert epochs >= 2 and (epochs - 1) * tokens < num_samples * seq + 1 <= epochs * tokens
    for e in range(epochs):  # each epoch is a permutation of the documents
        assert sorted(gpt.document_index[e * 30 : (e + 1) * 30]) == list(range(30))
    assert len(gpt) >= num_samples and sorted(gpt.shuffle_index) == list(range(len(gpt)))
    for i in range(len(gpt)):
        k = int(gpt.shuffle_index[i])
        want = ref.sample_tokens(docs, gpt.document_index, seq, k, 1)
        np.testing.assert_array_equal(gpt.sample_tokens(i), want)
    sample = gpt[0]
    np.testing.assert_array_equal(sample["tokens"][1:], sample["labels"][:-1])
    assert sample["tokens"].shape == (seq,) and sample["loss_mask"].min() == 1.0


def test_partial_last_sample_is_padded_and_masked(tmp_path):
    ds, docs = make_dataset(tmp_path / "d", 5, 3)
    tokens = sum(len(d) for d in docs)
    cfg = GPTDatasetConfig(seq_length=7, drop_last_partial_validation=False, pad_id=0,
                           data_cache_path=str(tmp_path / "c"))
    gpt = GPTDataset(ds, "valid", (0, 5), None, cfg)
    assert len(gpt) == -(-(tokens - 1) // 7)
    last = [i for i in range(len(gpt)) if int(gpt.shuffle_index[i]) == len(gpt) - 1][0]
    s = gpt[last]
    n_real = (tokens - 1) - 7 * (len(gpt) - 1)
    assert s["loss_mask"].tolist() == [1.0] * n_real + [0.0] * (7 - n_real)


def test_eod_mask_loss(tmp_path):
    ds, _ = make_dataset(tmp_path / "d", 20, 4, vocab=5)
    cfg = GPTDatasetConfig(seq_length=16, eod_id=3, eod_mask_loss=True, data_cache_path=str(tmp_path / "c"))
    s = GPTDataset(ds, "train", (0, 20), 5, cfg)[0]
    np.testing.assert_array_equal(s["loss_mask"], (s["labels"] != 3).astype(np.float32))


@pytest.mark.parametrize("weights, size", [([0.3, 0.7], 1000), ([1, 1, 1], 99), ([0.5, 0.25, 0.2, 0.05], 777),
                                           ([1.0], 10)])
def test_blending_matches_reference(weights, size):
    which, local = blending_indices(weights, size)
    w = np.asarray(weights) / sum(weights)
    ref_which, ref_local = ref.blending(list(w), size)
    assert which.tolist() == ref_which and local.tolist() == ref_local
    counts = np.bincount(which, minlength=len(w))
    assert np.all(np.abs(counts - w * size) <= 1.0)


def test_split_parsing_and_ranges():
    assert parse_split("969,30,1") == pytest.approx([0.969, 0.03, 0.001])
    assert parse_split("1") == [1.0, 0.0, 0.0]
    assert split_ranges(1000, parse_split("969,30,1")) == [(0, 969), (969, 999), (999, 1000)]
    assert split_ranges(10, parse_split("8,1,1")) == [(0, 8), (8, 9), (9, 10)]
    for bad in ("a,b", "1,2,3,4", "0,0,0", "-1,2"):
        with pytest.raises(MegaliteError, match="--split"):
            parse_split(bad)


def test_parse_data_path():
    assert parse_data_path(["a"]) == (["a"], None)
    assert parse_data_path(["a", "b"]) == (["a", "b"], None)
    assert parse_data_path(["0.3", "a", "0.7", "b"]) == (["a", "b"], [0.3, 0.7])
    with pytest.raises(MegaliteError, match="pairs"):
        parse_data_path(["0.3", "a", "0.7"])


def test_blended_splits_by_document(tmp_path):
    a, docs_a = make_dataset(tmp_path / "a", 100, 1)
    b, docs_b = make_dataset(tmp_path / "b", 50, 2)
    cfg = GPTDatasetConfig(seq_length=8, split="80,20,0", data_cache_path=str(tmp_path / "c"))
    train, valid, test = build_gpt_datasets(["0.25", str(tmp_path / "a"), "0.75", str(tmp_path / "b")],
                                            [400, 40, 0], cfg)
    assert test is None and len(train) == 400 and len(valid) == 40
    assert np.bincount(train.dataset_index).tolist() == [100, 300]
    assert train.datasets[0].document_range == (0, 80) and valid.datasets[1].document_range == (40, 50)
    assert set(valid.datasets[0].document_index) <= set(range(80, 100))
    for i in range(len(train)):
        assert train[i]["tokens"].shape == (8,)


def test_rank_slices_reproduce_single_rank_order(tmp_path):
    make_dataset(tmp_path / "d", 60, 5)
    cfg = GPTDatasetConfig(seq_length=12, data_cache_path=str(tmp_path / "c"))
    mbs, gbs_steps = 2, 5

    def read(dp_size, rank, consumed=0):
        (train, _, _) = build_gpt_datasets([str(tmp_path / "d")], [200, 0, 0], cfg)
        touched = []
        sampler = PretrainingSampler(len(train), consumed, mbs, rank, dp_size)
        batches = []
        for batch in sampler:
            touched += batch
            batches.append([train.sample_tokens(i).tolist() for i in batch])
            if len(batches) == gbs_steps * (4 // dp_size):
                break
        return batches, touched

    single, _ = read(1, 0)
    for dp in (2, 4):
        per_rank = [read(dp, r) for r in range(dp)]
        touched = [set(t) for _, t in per_rank]
        assert all(not (touched[i] & touched[j]) for i in range(dp) for j in range(i + 1, dp))
        interleaved = [mb for step in zip(*[b for b, _ in per_rank]) for mb in step]
        assert interleaved == single[: len(interleaved)]
    # Resuming from a consumed-sample count continues the same sequence.
    resumed, _ = read(1, 0, consumed=2 * mbs)
    assert resumed[: len(single) - 2] == single[2:]


def test_cache_hit_and_invalidation(tmp_path):
    ds, _ = make_dataset(tmp_path / "d", 40, 6)
    cache = str(tmp_path / "cache")

    def build(**kw):
        cfg = GPTDatasetConfig(**{"seq_length": 10, "seed": 1, "data_cache_path": cache, **kw})
        return GPTDataset(IndexedDataset(str(tmp_path / "d")), "train", (0, 40), 100, cfg)

    first = build()
    assert first.built_indices
    again = build()
    assert not again.built_indices
    np.testing.assert_array_equal(first.shuffle_index, again.shuffle_index)
    assert build(seed=2).built_indices
    assert build(seq_length=11).built_indices
    assert not build().built_indices
    # Rewriting the data files invalidates indices built for the old ones.
    time.sleep(0.01)
    make_dataset(tmp_path / "d", 40, 7)
    assert build().built_indices
    # A damaged description is not trusted.
    desc = [p for p in os.listdir(cache) if p.endswith("description.json")]
    for p in desc:
        with open(os.path.join(cache, p), "w") as f:
            f.write("{")
    assert build().built_indices
    assert len(os.listdir(cache)) == 4 * 4


def test_default_cache_next_to_data(tmp_path):
    ds, _ = make_dataset(tmp_path / "d", 10, 8)
    gpt = GPTDataset(ds, "train", (0, 10), 3, GPTDatasetConfig(seq_length=4))
    assert gpt.cache_dir == str(tmp_path / "cache" / "GPTDataset_indices")
    assert len(os.listdir(gpt.cache_dir)) == 4


def test_build_indices_needs_tokens():
    with pytest.raises(MegaliteError, match="too few"):
        build_indices(np.array([1], dtype=np.int32), np.array([0]), 10, 4, 0)
