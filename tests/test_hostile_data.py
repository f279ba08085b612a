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
    for src, counts in ((bad, f"2 bad records, 0 empty texts skipped; first: {bad}:1: bad JSON (Expecting "
                              "property name enclosed in double quotes)"),
                        (empty, "0 bad records, 0 empty texts skipped")):
        proc = preprocess(src, prefix, spm_model)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"error: --input {src}: no documents for {prefix}_text_document ({counts}); nothing "
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


# -- item 12: ids past the vocabulary, and an index that disagrees with its sizes ---------------
def test_token_id_past_the_vocabulary_names_file_and_document(tmp_path, spm_model):
    """A .bin from another tokenizer: document 1 holds id 5000 under a 1000-id vocabulary (today
    an IndexError from the embedding, or a silently wrong id below the padded vocabulary).
    With loader workers, as in real runs, the user still gets one line."""
    import numpy as np

    from megalite.data.indexed import IndexedDatasetBuilder

    prefix = str(tmp_path / "foreign")
    with IndexedDatasetBuilder(prefix, np.uint16) as b:
        b.add_documents(np.r_[np.arange(5, 45), np.arange(5, 20), 5000, np.arange(20, 45)].astype(np.uint16),
                        np.array([40, 41]))
    proc = run_tool("pretrain_gpt.py", *tiny_model_args(prefix, spm_model, train_iters=2, split="1",
                                                        num_workers=2), check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [(f"error: {prefix}.bin: document 1 holds token id 5000, outside the "
                                            "vocabulary of 1000; the file is corrupt or was made with another "
                                            "tokenizer")]


def write_index(path, lengths, pointers, doc_idx, code=8):
    import struct

    import numpy as np

    with open(path, "wb") as f:
        f.write(struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, code, len(lengths), len(doc_idx)))
        f.write(np.asarray(lengths, "<i4").tobytes() + np.asarray(pointers, "<i8").tobytes()
                + np.asarray(doc_idx, "<i8").tobytes())


@pytest.mark.parametrize("lengths, pointers, doc_idx, bin_bytes, error", [
    ([3, 4], [0, 8], [0, 1, 2], 14, "{idx}: sequence pointer 1 is 8, expected 6; the index is corrupt"),
    ([3, 4], [0, 6], [0, 1, 5], 14, "{idx}: document indices must run from 0 to the sequence count"),
    ([3, 4], [0, 6], [0, 2, 1, 2], 14, "{idx}: document indices are not increasing"),
    ([3, -4], [0, 6], [0, 1, 2], 0, "{idx}: negative sequence length"),
    ([3, 4], [0, 6], [0, 1, 2], 12, "{bin}: holds 12 bytes but {idx} describes 14; the file is truncated or "
                                    "the .bin/.idx pair comes from different runs"),
])
def test_index_that_disagrees_with_sizes_is_refused_on_open(tmp_path, lengths, pointers, doc_idx, bin_bytes,
                                                            error):
    from megalite.errors import MegaliteError

    prefix = str(tmp_path / "d")
    write_index(prefix + ".idx", lengths, pointers, doc_idx)
    (tmp_path / "d.bin").write_bytes(bytes(bin_bytes))
    with pytest.raises(MegaliteError) as e:
        IndexedDataset(prefix)
    assert str(e.value) == error.format(idx=prefix + ".idx", bin=prefix + ".bin")


# -- item 14: one huge JSONL line ---------------------------------------------------------------
def test_line_over_max_line_bytes_is_a_bad_record_with_its_line_number(tmp_path, spm_model):
    from megalite.data.tokenizer import build_tokenizer

    at_limit = json.dumps({"text": "x" * 988})  # exactly 1000 bytes without its newline
    assert len(at_limit) == 1000
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": "first"}, {"text": "y" * 5000}, at_limit, {"text": "last"}])
    proc = preprocess(src, tmp_path / "out", spm_model, "--max-line-bytes", "1000")
    assert proc.returncode == 0
    assert f"{src}:2: 5012 bytes, over --max-line-bytes 1000" in proc.stdout.splitlines()[3]
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    assert [list(ds[i]) for i in range(len(ds))] == [tok.encode(t) + [tok.eod] for t in ("first", "x" * 988, "last")]

    proc = preprocess(src, tmp_path / "strict", spm_model, "--max-line-bytes", "1000", "--strict")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {src}:2: 5012 bytes, over --max-line-bytes 1000 (drop --strict to "
                                        "skip bad records)"]


def test_a_10_mb_line_is_never_held_whole(tmp_path, spm_model):
    """Peak memory of preprocessing one 10 MB line with the default limit: 53 MB here, 517 MB
    before the limit (the line tokenized whole)."""
    src = write_jsonl(tmp_path / "big.jsonl", [{"text": "word " * (2 << 20)}, {"text": "a small one"}])
    # VmHWM: this process's own peak (not pytest's)
    code = ("import sys; from tools.preprocess_data import main; main(sys.argv[1:]); "
            "print([x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].strip())")
    proc = run_tool("-c", code, "--input", src, "--output-prefix", str(tmp_path / "o"), *SPM,
                    "--tokenizer-model", spm_model)
    lines = proc.stdout.splitlines()
    assert f"  {src}:1: 10485772 bytes, over --max-line-bytes 8388608" in lines
    assert int(lines[-1].split()[1]) < 150 * 1024, lines[-1]  # kB


# -- item 10: the precomputed reference log-probs cache -----------------------------------------
def test_reference_log_probs_cache_is_loaded_safely_and_checked(tmp_path, capsys):
    """A cached table is read with weights_only (a pickle that runs code is refused) and must be
    finite log-probs of the pairs' shape: a wrong shape or 1e6 entries stop the run naming the
    file, instead of training on them. A good cache is read back as written."""
    import os
    import pickle
    from types import SimpleNamespace

    import torch

    from megalite.errors import MegaliteError
    from megalite.posttrain.dpo import cached_scores

    cfg = SimpleNamespace(training=SimpleNamespace(micro_batch_size=2))
    trainer = SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"))
    items = SimpleNamespace(picks=None, stores=[SimpleNamespace(prefix=str(tmp_path / "abc-pairs.jsonl"))])
    good = -torch.rand(4, 2) * 30

    def scores(shape=(4, 2)):
        return cached_scores(cfg, trainer, items, "fp", "pairs", lambda: good.clone(), shape)

    assert torch.equal(scores(), good)  # scored, then cached
    (path,) = [str(p) for p in tmp_path.iterdir() if p.name.endswith("-ref_logps.pt")]
    assert torch.equal(cached_scores(cfg, trainer, items, "fp", "pairs", lambda: 1 / 0, (4, 2)), good)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    expected = "{path}: {problem}, not the reference log-probs of shape [4, 2] this run needs; delete it to score " \
               "them again"
    for content, problem in [
        (torch.zeros(3, 2), "holds a table of shape [3, 2]"),
        (torch.full((4, 2), 1e6), "holds 1000000.0, not a log-probability"),
        (torch.tensor([[0.0, float("nan")]] * 4), "holds nan, not a log-probability"),
        (torch.zeros(4, 2, dtype=torch.int64), "holds torch.int64"),
        (Payload(), "cannot be loaded as plain tensors (UnpicklingError)"),
        (b"", "cannot be loaded as plain tensors (EOFError)"),
    ]:
        with open(path, "wb") as f:
            if isinstance(content, torch.Tensor):
                torch.save(content, f)
            elif isinstance(content, bytes):
                f.write(content)
            else:
                pickle.dump(content, f, protocol=2)
        with pytest.raises(MegaliteError) as e:
            scores()
        assert str(e.value) == expected.format(path=path, problem=problem)
    assert not (tmp_path / "pwned").exists()


# -- item 11: dataset_info.json naming files outside its folder -----------------------------------
def folder_state(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def test_dataset_info_file_name_outside_its_folder_is_refused(tmp_path, spm_model):
    """A downloaded dataset_info.json whose file_name is ../.. or absolute: today the file is read
    and its tokenized cache written next to it, outside the folder. Refused, nothing written;
    a file inside (also in a subfolder) works, its cache stays in the folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write_jsonl(outside / "secret.jsonl", [{"instruction": "hi", "output": "there"}])
    data = tmp_path / "home" / "ds"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "sub" / "qa.jsonl", [{"instruction": "hi", "output": "there"}])
    (data / "dataset_info.json").write_text(json.dumps({
        "up": {"file_name": "../../outside/secret.jsonl"},
        "abs": {"file_name": str(outside / "secret.jsonl")},
        "dot": {"file_name": "."},
        "ok": {"file_name": "sub/../sub/qa.jsonl"},
    }))
    before = folder_state(tmp_path)
    for name, file_name in (("up", "../../outside/secret.jsonl"), ("abs", str(outside / "secret.jsonl")),
                            ("dot", ".")):
        proc = run_tool("tools/preprocess_sft.py", "--sft-data", name, "--sft-dataset-dir", str(data),
                        "--seq-length", "64", *SPM, "--tokenizer-model", spm_model, "--chat-template", "chatml",
                        check=False)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"error: {data}/dataset_info.json: data set {name!r}: file_name {file_name!r} is not inside {data}; a "
            "dataset_info.json may only name files in its own folder (give a file elsewhere to --sft-data by its "
            "path)"]
        assert folder_state(tmp_path) == before

    proc = run_tool("tools/preprocess_sft.py", "--sft-data", "ok", "--sft-dataset-dir", str(data), "--seq-length",
                    "64", *SPM, "--tokenizer-model", spm_model, "--chat-template", "chatml")
    assert "1 examples" in proc.stdout
    written = set(folder_state(tmp_path)) - set(before)
    assert written and all(k.startswith("home/ds/sub/cache") for k in written), written

    from megalite.data.sft_formats import resolve_sources  # preference data (DPO, KTO, RM) resolves the same way
    from megalite.errors import MegaliteError

    (data / "dataset_info.json").write_text(json.dumps({"up": {"file_name": "../x.jsonl", "ranking": True}}))
    with pytest.raises(MegaliteError, match=r"^.*data set 'up': file_name '../x.jsonl' is not inside .*--pref-data"):
        resolve_sources("up", str(data), "--pref-data", ranking=True)


def test_megatron_index_with_an_empty_document_opens(tmp_path):
    """Megatron allows a document without sequences (a repeated document index): it reads as empty."""
    prefix = str(tmp_path / "d")
    write_index(prefix + ".idx", [3, 4], [0, 6], [0, 1, 1, 2])
    (tmp_path / "d.bin").write_bytes(bytes(range(14)))
    ds = IndexedDataset(prefix)
    assert [ds.document(d).tolist() for d in range(ds.num_documents)] == [[256, 770, 1284], [], [1798, 2312, 2826,
                                                                                              3340]]
