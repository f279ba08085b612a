import os
import struct

import numpy as np
import pytest

from megalite.data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype
from megalite.errors import MegaliteError
from tests.conftest import run_main, run_tool

# Written by Megatron-LM's own IndexedDatasetBuilder (uint16) for the documents
# [1, 2, 3], [4, 5], [6]: our writer must produce exactly these bytes.
MEGATRON_IDX_HEX = (
    "4d4d4944494458000001000000000000000803000000000000000400000000000000030000000200000001"
    "000000000000000000000006000000000000000a00000000000000000000000000000001000000000000000200"
    "0000000000000300000000000000"
)


def random_docs(rng, n, vocab):
    return [rng.integers(0, vocab, size=int(rng.integers(0, 300))) for _ in range(n)]


def write(prefix, docs, dtype):
    with IndexedDatasetBuilder(str(prefix), dtype) as b:
        for d in docs:
            b.add_item(d)
            b.end_document()
    return IndexedDataset(str(prefix))


@pytest.mark.parametrize("vocab", [1000, 65499, 200_000])
def test_round_trip(tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    docs = random_docs(rng, 200, vocab)
    ds = write(tmp_path / "d", docs, best_dtype(vocab))
    assert ds.dtype == (np.uint16 if vocab < 65500 else np.int32)
    assert len(ds) == ds.num_documents == 200
    assert ds.num_tokens == sum(len(d) for d in docs)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    i = int(np.argmax([len(d) for d in docs]))
    np.testing.assert_array_equal(ds.get(i, 5, 17), docs[i][5:22])
    with pytest.raises(IndexError):
        ds.get(i, len(docs[i]) - 1, 2)


def test_batch_append_and_multi_sequence_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 50, 3000)
    with IndexedDatasetBuilder(str(tmp_path / "a"), np.uint16) as b:
        b.add_documents(np.concatenate(docs), [len(d) for d in docs])
        b.add_item([7, 8])  # one document of two sequences
        b.add_item([9])
        b.end_document()
    ds = IndexedDataset(str(tmp_path / "a"))
    assert len(ds) == 52 and ds.num_documents == 51
    np.testing.assert_array_equal(ds.document(50), [7, 8, 9])
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)


def test_bytes_match_megatron(tmp_path):
    with IndexedDatasetBuilder(str(tmp_path / "m"), np.uint16) as b:
        b.add_documents(np.array([1, 2, 3, 4, 5, 6]), [3, 2, 1])
    assert (tmp_path / "m.idx").read_bytes() == bytes.fromhex(MEGATRON_IDX_HEX)
    assert (tmp_path / "m.bin").read_bytes() == np.arange(1, 7, dtype="<u2").tobytes()


def test_reads_file_written_by_spec(tmp_path):
    """An int32 pair written by hand from the format description, independent of our writer."""
    docs = [[5, 70000, 3], [], [42]]
    lengths = [len(d) for d in docs]
    pointers = [0, 12, 12]
    with open(tmp_path / "h.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 3, 4))
        f.write(struct.pack("<3i", *lengths) + struct.pack("<3q", *pointers) + struct.pack("<4q", 0, 1, 2, 3))
    (tmp_path / "h.bin").write_bytes(struct.pack("<4i", 5, 70000, 3, 42))
    ds = IndexedDataset(str(tmp_path / "h"))
    assert [list(ds[i]) for i in range(3)] == docs


def test_merge_tool(tmp_path):
    rng = np.random.default_rng(1)
    parts = [random_docs(rng, n, 500) for n in (10, 0, 25)]
    folder = tmp_path / "parts"
    for k, docs in enumerate(parts):
        write(folder / f"p{k}", docs, np.uint16)
    run_tool("tools/merge_datasets.py", "--input", str(folder), "--output-prefix", str(tmp_path / "all"))
    merged = IndexedDataset(str(tmp_path / "all"))
    flat = [d for docs in parts for d in docs]
    assert merged.num_documents == len(flat) == 35
    for i, d in enumerate(flat):
        np.testing.assert_array_equal(merged[i], d)


def test_merge_rejects_mixed_dtypes(tmp_path):
    write(tmp_path / "a", [[1, 2]], np.uint16)
    write(tmp_path / "b", [[1, 2]], np.int32)
    proc = run_main("tools/merge_datasets.py", "--prefixes", str(tmp_path / "a"), str(tmp_path / "b"),
                    "--output-prefix", str(tmp_path / "out"), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "b.idx" in proc.stderr
    assert not (tmp_path / "out.bin").exists() and not list(tmp_path.glob("out*tmp*"))


@pytest.fixture
def good_pair(tmp_path):
    write(tmp_path / "g", random_docs(np.random.default_rng(2), 20, 900), np.uint16)
    return tmp_path / "g"


def corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: corrupt(f"{p}.idx", 0, b"NOTANIDX"), "not an MMIDIDX index"),
        (lambda p: corrupt(f"{p}.idx", 9, struct.pack("<Q", 2)), "version 2"),
        (lambda p: corrupt(f"{p}.idx", 17, b"\x63"), "dtype code 99"),
        (lambda p: os.truncate(f"{p}.idx", os.path.getsize(f"{p}.idx") - 8), "truncated or corrupt"),
        (lambda p: os.truncate(f"{p}.idx", 5), "too short"),
        (lambda p: os.truncate(f"{p}.bin", os.path.getsize(f"{p}.bin") - 2), "truncated or the .bin/.idx pair"),
        # the last pointer points past the end of .bin
        (lambda p: corrupt(f"{p}.idx", 34 + 20 * 4 + 19 * 8, struct.pack("<q", 10**9)), "sequence pointer 19"),
        (lambda p: corrupt(f"{p}.idx", 34 + 20 * 12, struct.pack("<q", 5)), "document indices"),
    ],
    ids=["magic", "version", "dtype", "idx-truncated", "idx-tiny", "bin-truncated", "pointer", "doc-index"],
)
def test_corrupt_files_raise_clear_errors(good_pair, damage, message):
    damage(good_pair)
    with pytest.raises(MegaliteError, match=message) as e:
        IndexedDataset(str(good_pair))
    assert str(good_pair.name) in str(e.value)


def test_pair_from_different_runs(tmp_path, good_pair):
    write(tmp_path / "other", random_docs(np.random.default_rng(3), 20, 900), np.uint16)
    os.replace(tmp_path / "other.bin", f"{good_pair}.bin")
    with pytest.raises(MegaliteError, match="different runs"):
        IndexedDataset(str(good_pair))


def test_missing_bin(good_pair):
    os.remove(f"{good_pair}.bin")
    with pytest.raises(MegaliteError, match="g.bin: no such file"):
        IndexedDataset(str(good_pair))


def test_failed_build_keeps_previous_files(tmp_path, good_pair):
    before = (good_pair.with_suffix(".bin").read_bytes(), good_pair.with_suffix(".idx").read_bytes())
    with pytest.raises(MegaliteError, match="does not fit"):
        with IndexedDatasetBuilder(str(good_pair), np.uint16) as b:
            b.add_item([1, 2, 3])
            b.add_item(np.array([70000]))
    after = (good_pair.with_suffix(".bin").read_bytes(), good_pair.with_suffix(".idx").read_bytes())
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.bin", "g.idx"]


def test_empty_dataset(tmp_path):
    ds = write(tmp_path / "e", [], np.uint16)
    assert len(ds) == 0 and ds.num_documents == 0 and ds.num_tokens == 0
