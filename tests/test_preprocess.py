import gzip
import json

import numpy as np
import pytest

from megalite.data.indexed import IndexedDataset
from megalite.data.preprocess import PreprocessConfig, TokenizerSpec, preprocess
from megalite.data.tokenizer import build_tokenizer
from tests.conftest import english_documents, run_main, run_tool, write_jsonl

DOCS = english_documents()[:400]
BAD = {  # line number (1-based) -> malformed record
    5: "{not json",
    17: json.dumps({"text": 42}),
    30: json.dumps({"title": "no text key"}),
    31: json.dumps(["a", "list"]),
}


def corpus_records():
    records, expected, docs = [], [], iter(DOCS)
    for line in range(1, len(DOCS) + len(BAD) + 1):
        if line in BAD:
            records.append(BAD[line])
        else:
            d = next(docs)
            records.append({"text": d, "title": d[:20]})
            expected.append(d)
    return records, expected


def spec(model):
    return TokenizerSpec("SentencePieceTokenizer", model)


def assert_tokens(prefix, texts, tok, eod=True):
    ds = IndexedDataset(prefix)
    assert ds.num_documents == len(texts)
    for i, t in enumerate(texts):
        want = tok.encode(t) + ([tok.eod] if eod else [])
        np.testing.assert_array_equal(ds[i], want)


def test_cli_reports_malformed_lines(tmp_path, spm_model):
    records, expected = corpus_records()
    src = write_jsonl(tmp_path / "c.jsonl", records)
    proc = run_tool("tools/preprocess_data.py", "--input", src, "--output-prefix", str(tmp_path / "out"),
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", spm_model,
                    "--append-eod", "--workers", "2", "--json-keys", "text", "title")
    assert "bad records skipped: 4" in proc.stdout
    for line, reason in [(5, "bad JSON"), (17, "key 'text' is int, not a string"), (30, "missing key 'text'"),
                         (31, "not a JSON object")]:
        assert f"c.jsonl:{line}: {reason}" in proc.stdout
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    assert_tokens(str(tmp_path / "out_text_document"), expected, tok)
    assert_tokens(str(tmp_path / "out_title_document"), [d[:20] for d in expected], tok)
    assert IndexedDataset(str(tmp_path / "out_text_document")).dtype == np.uint16


def test_strict_stops_at_first_bad_line(tmp_path, spm_model):
    records, _ = corpus_records()
    src = write_jsonl(tmp_path / "c.jsonl", records)
    proc = run_main("tools/preprocess_data.py", "--input", src, "--output-prefix", str(tmp_path / "out"),
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", spm_model,
                    "--strict", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {src}:5: bad JSON (Expecting property name "
                                                "enclosed in double quotes) (drop --strict to skip bad records)"]
    assert list(tmp_path.iterdir()) == [tmp_path / "c.jsonl"]  # no partial output left behind


def test_workers_do_not_change_output(tmp_path, spm_model):
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    outs = []
    for workers in (1, 2):
        prefix = str(tmp_path / f"w{workers}")
        s = preprocess(PreprocessConfig([src], prefix, spec(spm_model), append_eod=True,
                                        workers=workers, batch_bytes=4096))
        assert s.documents == len(DOCS) and s.bad == 0
        outs.append(open(prefix + "_text_document.bin", "rb").read())
        outs.append(open(prefix + "_text_document.idx", "rb").read())
    assert outs[0] == outs[2] and outs[1] == outs[3]


def test_input_formats(tmp_path, spm_model):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zstd = pytest.importorskip("zstandard")
    datasets = pytest.importorskip("datasets")
    parts = [DOCS[:50], DOCS[50:100], DOCS[100:150], DOCS[150:200]]
    folder = tmp_path / "in"
    folder.mkdir()
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in parts[0])
    with open(folder / "b.jsonl.zst", "wb") as f:
        f.write(zstd.ZstdCompressor().compress("".join(json.dumps({"text": d}) + "\n" for d in parts[1]).encode()))
    pq.write_table(pa.table({"text": parts[2]}), folder / "c.parquet", row_group_size=16)
    datasets.Dataset.from_dict({"text": parts[3]}).save_to_disk(str(tmp_path / "saved"))
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    s = preprocess(PreprocessConfig([str(folder), str(tmp_path / "saved")], str(tmp_path / "o"),
                                    spec(spm_model), workers=2))
    assert s.documents == 200
    assert_tokens(str(tmp_path / "o_text_document"), DOCS[:200], tok, eod=False)
    s = preprocess(PreprocessConfig([str(folder / "*.parquet")], str(tmp_path / "g"), spec(spm_model)))
    assert_tokens(str(tmp_path / "g_text_document"), parts[2], tok, eod=False)


def test_rank_split_and_merge(tmp_path, spm_model):
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS[:101]])
    parts = tmp_path / "parts"
    for rank in range(3):
        run_main("tools/preprocess_data.py", "--input", src, "--output-prefix", str(parts / "shard"),
                 "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", spm_model,
                 "--rank", str(rank), "--world-size", "3")
    names = sorted(p.name for p in parts.iterdir())
    assert names[0] == "shard_00000-of-00003_text_document.bin" and len(names) == 6
    run_main("tools/merge_datasets.py", "--input", str(parts), "--output-prefix", str(tmp_path / "all"))
    merged = IndexedDataset(str(tmp_path / "all"))
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    # Rank r holds documents r, r+3, ...; the merge lists rank 0's, then rank 1's, ...
    order = [i for r in range(3) for i in range(r, 101, 3)]
    assert merged.num_documents == 101
    for pos, i in enumerate(order):
        np.testing.assert_array_equal(merged[pos], tok.encode(DOCS[i]))


def test_missing_input_is_one_line_error(tmp_path, spm_model):
    proc = run_main("tools/preprocess_data.py", "--input", str(tmp_path / "missing*.jsonl"),
                    "--output-prefix", str(tmp_path / "o"), "--tokenizer-type", "SentencePieceTokenizer",
                    "--tokenizer-model", spm_model, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "missing*.jsonl" in proc.stderr
