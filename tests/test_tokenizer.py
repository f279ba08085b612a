import json

import pytest

from megalite.data.tokenizer import build_tokenizer
from megalite.errors import MegaliteError
from tests.conftest import english_documents, run_main, run_tool

SAMPLE = "In 1987, the café served 12345 croissants — naïve 日本語 text 🙂 stays\nexact.  Two  spaces."


def test_trained_sentencepiece(spm_model):
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    assert tok.vocab_size == 1000
    assert (tok.eod, tok.bos, tok.pad) == (2, 1, 3)
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE  # identity normalisation + byte fallback: exact round trip
    digits = [tok.decode([i]) for i in tok.encode("12345")]
    assert [d for d in digits if d.strip()] == ["1", "2", "3", "4", "5"]  # split digits
    assert 4 in tok.encode("<|im_start|>user")  # the user special token is one, unsplit piece
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_train_tokenizer_cli(tmp_path, english_jsonl):
    run_tool("data_tools/train_tokenizer.py", "--input", english_jsonl, "--vocab-size", "600",
             "--output-dir", str(tmp_path))
    tok = build_tokenizer("GPTSentencePieceTokenizer", str(tmp_path / "tokenizer.model"))
    assert tok.vocab_size == 600
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.model"]


def test_train_tokenizer_cli_error(tmp_path):
    proc = run_main("data_tools/train_tokenizer.py", "--input", str(tmp_path / "nope.jsonl"),
                    "--vocab-size", "600", "--output-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and "nope.jsonl" in proc.stderr


def _train_hf_bpe(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(english_documents()[:300], trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": "<pad>"}))
    return tok


def test_huggingface_folder_and_file(tmp_path):
    ref = _train_hf_bpe(tmp_path / "hf")
    for path in (tmp_path / "hf", tmp_path / "hf" / "tokenizer.json"):
        tok = build_tokenizer("HuggingFaceTokenizer", str(path))
        assert tok.vocab_size == ref.get_vocab_size()
        assert tok.encode(SAMPLE) == ref.encode(SAMPLE, add_special_tokens=False).ids
        assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    tok = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "hf"))
    assert (tok.bos, tok.eod, tok.pad) == (0, 1, 2)


def test_gpt2_bpe_files(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    ref = ByteLevelBPETokenizer()
    ref.train_from_iterator(english_documents()[:300], vocab_size=700, special_tokens=["<|endoftext|>"])
    vocab, merges = ref.save_model(str(tmp_path))
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    assert tok.eod == ref.token_to_id("<|endoftext|>")
    assert tok.encode(SAMPLE) == ref.encode(SAMPLE).ids
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


@pytest.mark.parametrize("args, message", [
    (("BertWordPiece",), "not supported"),
    (("SentencePieceTokenizer",), "needs --tokenizer-model"),
    (("SentencePieceTokenizer", "/nonexistent/tokenizer.model"), "no such file"),
    (("GPT2BPETokenizer", None, "/nonexistent/vocab.json", "/x"), "--vocab-file"),
])
def test_bad_tokenizer_flags(args, message):
    with pytest.raises(MegaliteError, match=message):
        build_tokenizer(*args)


def _special_texts_cases(tok):
    """Texts with the tokenizer's special-token texts at the start, middle and end, adjacent,
    with spaces and newlines around them."""
    specials = sorted(tok.special_texts)
    eos = tok.id_to_token(tok.eod)
    texts = [eos, f"Hello world{eos}", f"{eos}Hello", f"Hello {eos} world", f"Hello{eos}{eos}world",
             f"  {eos}  two  spaces {eos}  ", f"a\n{eos}\nb", " ".join(specials), "".join(specials),
             f"{specials[-1]}user\nHi there{eos}\n{specials[0]} naïve 日本語 🙂"]
    return texts + [s for s in specials]


def _exported(tmp_path, kind):
    from tokenizers import ByteLevelBPETokenizer

    from megalite.hf.tokenizer import export_tokenizer

    if kind == "sentencepiece":
        from data_tools.train_tokenizer import train_tokenizer
        from tests.conftest import write_jsonl

        corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in english_documents()[:300]])
        tok = build_tokenizer("SentencePieceTokenizer",
                              train_tokenizer([corpus], str(tmp_path), 500, special_tokens=["<|im_start|>"]))
    elif kind == "gpt2":
        ref = ByteLevelBPETokenizer()
        ref.train_from_iterator(english_documents()[:300], vocab_size=700, special_tokens=["<|endoftext|>"])
        vocab, merges = ref.save_model(str(tmp_path))
        tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    else:
        _train_hf_bpe(tmp_path / "hf")
        # A chat token the config names but tokenizer.json does not hold: transformers adds it.
        (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
             "additional_special_tokens": ["<|im_start|>"]}))
        tok = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "hf"))
    export_tokenizer(tok, str(tmp_path / "export"))
    return tok, str(tmp_path / "export")


@pytest.mark.parametrize("kind", ["sentencepiece", "gpt2", "huggingface"])
def test_special_token_texts_encode_to_their_ids_as_transformers_does(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    tok, export = _exported(tmp_path, kind)
    hf = transformers.AutoTokenizer.from_pretrained(export)
    assert len(tok.special_texts) >= (4 if kind != "gpt2" else 1)
    # A chat template sees the same special-token variables here as in transformers.
    assert {name: getattr(hf, name) for name in tok.special_tokens} == tok.special_tokens
    assert {k for k, v in hf.special_tokens_map.items() if isinstance(v, str)} <= set(tok.special_tokens)
    assert tok.unk is None or tok.special_tokens["unk_token"] == hf.unk_token == tok.id_to_token(tok.unk)
    for text, i in tok.special_texts.items():
        assert tok.encode(text) == [i] == hf(text, add_special_tokens=False).input_ids
    texts = _special_texts_cases(tok)
    expected = [hf(t, add_special_tokens=False).input_ids for t in texts]
    assert [tok.encode(t) for t in texts] == expected
    assert tok.encode_batch(texts) == expected
    assert [tok.encode_text(t) for t in texts] == [hf(t).input_ids for t in texts]
    for text, ids in zip(texts, expected):
        got, offsets = tok.encode_with_offsets(text)
        assert got == ids
        for i, (start, end) in zip(got, offsets):
            if i in tok.special_texts.values():
                assert text[start:end] == tok.id_to_token(i)  # a special token's offsets cover its text


def test_alpaca_answer_under_sentencepiece_ends_with_the_eos_id(spm_model):
    # examples/sft_lora.sh: the alpaca template renders bos_token and eos_token as text.
    import numpy as np

    from megalite.data.chat import BUILTIN, tokenize_chat

    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    chat = [{"role": "user", "content": "Explain the assert statement."},
            {"role": "assistant", "content": "It raises AssertionError when its test is false."}]
    ids, mask = tokenize_chat(tok, BUILTIN["alpaca"], chat)
    trained = ids[mask].tolist()
    assert ids[0] == tok.bos and trained[-1] == tok.eod and np.count_nonzero(ids == tok.eod) == 1
    assert tok.decode(trained[:-1]) == "It raises AssertionError when its test is false."


def test_fingerprint_names_the_encoding_rules(spm_model, monkeypatch):
    # Example caches are keyed by fingerprint(): a change of the rules must not reuse old ids.
    import megalite.data.tokenizer as tokenizer_module

    before = build_tokenizer("SentencePieceTokenizer", spm_model).fingerprint()
    assert build_tokenizer("SentencePieceTokenizer", spm_model).fingerprint() == before
    monkeypatch.setattr(tokenizer_module, "ENCODING_VERSION", tokenizer_module.ENCODING_VERSION - 1)
    assert build_tokenizer("SentencePieceTokenizer", spm_model).fingerprint() != before
