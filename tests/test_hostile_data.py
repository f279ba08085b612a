"""Hostile data inputs (issue 19, items 7, 10, 11, 12 and 14): files megalite's own tools
would not write. Each test asserts what the user sees: the one error line, the exit code, and
that what was on disk before is still there byte for byte."""

import hashlib
import json

import pytest

from megalite.data.indexed import IndexedDataset
from tests.conftest import run_tool, tiny_model_args, write_jsonl

SPM = ("--tokenizer-type", "SentencePieceTokenizer")


def digest(*paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def preprocess(src, prefix, spm_model, *extra):
    return run_tool("tools/preprocess_data.py", "--input", str(src), "--output-prefix", str(prefix), *SPM,
                    "--tokenizer-model", spm_model, "--append-eod", *extra, check=False)


# -- item 7: zero documents never replace a dataset ----------------------------------------------
def test_zero_documents_keep_the_existing_dataset(tmp_path, spm_model):
    prefix = tmp_path / "out"
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a good document"}, {"text": "and another"}])
    assert preprocess(good, prefix, spm_model).returncode == 0
    files = [f"{prefix}_text_document.bin", f"{prefix}_text_document.idx"]
    before = digest(*files)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{not json", json.dumps({"title": "no text"})])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for src, counts in ((bad, "2 bad records, 0 empty texts"), (empty, "0 bad records, 0 empty texts")):
        proc = preprocess(src, prefix, spm_model)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"error: --input {src}: no documents for {prefix}_text_document ({counts} skipped); nothing "
            "written, files already there are kept (--allow-empty writes an empty dataset)"]
        assert digest(*files) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty.jsonl", "good.jsonl",
                                                              "out_text_document.bin", "out_text_document.idx"]

    # --allow-empty writes it; training on it then says what is wrong in one line
    assert preprocess(empty, tmp_path / "none", spm_model, "--allow-empty").returncode == 0
    assert IndexedDataset(str(tmp_path / "none_text_document")).num_documents == 0
    proc = run_tool("pretrain_gpt.py", *tiny_model_args(str(tmp_path / "none_text_document"), spm_model,
                                                         train_iters=1), check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (f"error: --data-path {tmp_path}/none_text_document: the dataset is "
                                            "empty (0 documents, 0 tokens)")
