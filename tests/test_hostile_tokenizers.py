"""Sentencepiece models megalite did not train (issue 19, items 1-2): every normalization rule,
with and without the dummy prefix and whitespace removal, unigram and BPE, byte fallback on and
off, user-defined and control symbols. Our ids must equal sentencepiece's on text without
special tokens and transformers' on our export on every text; docs/hf.md tabulates these."""

import re

import pytest

from megalite.data.tokenizer import SentencePieceTokenizer
from megalite.errors import MegaliteError
from megalite.hf.tokenizer import export_tokenizer

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

# Lines no generated corpus has: newlines, runs of spaces, tabs, full-width and accented
# characters (precomposed and combining), emoji, CJK, leading and trailing spaces.
HOSTILE = [
    "line one\nline two\n\nline four",
    "runs   of    spaces and\ttabs\t\there",
    "   leading spaces, and trailing ones   ",
    "\ttab first, newline last\n",
    "ＡＢＣ１２３ full-width ＡＢＣ and ｶﾀｶﾅ half-width",
    "café vs cafe\u0301, naïve vs nai\u0308ve, Å vs A\u030a, ÉCOLE vs E\u0301COLE",
    "emoji 🙂🚀 and a family 👨‍👩‍👧 in text",
    "中文字符和日本語のテキスト, 한국어도",
    "ligatures ﬁ ﬂ, superscripts x² and ½, the ™ sign",
    "no-break\u00a0space, ideographic\u3000space, zero\u200bwidth",
    "quotes “like” ‘these’ — and dashes – here…",
    "x  \n  y",
    " ",
    "\n",
    "",
]
SPECIAL = ["<s>Hello</s>", "</s>", "Hi </s>", "  <s>  spaced  </s>  ", "a</s></s>b", "<unk> and <pad>",
           "ＡＢＣ</s>\n中文", "</s>   trailing"]
USER = ["<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", " <|im_start|> x", "[SEP]y[SEP]"]

# (name, trainer settings beyond the common ones): docs/hf.md's table lists these.
SETTINGS = {
    "unigram, nmt_nfkc (sentencepiece's defaults)": {},
    "unigram, identity": {"normalization_rule_name": "identity"},
    "unigram, nfkc": {"normalization_rule_name": "nfkc"},
    "unigram, no dummy prefix": {"add_dummy_prefix": False},
    "unigram, whitespace kept": {"remove_extra_whitespaces": False},
    "unigram, byte fallback": {"byte_fallback": True},
    "unigram, user-defined and control symbols": {
        "user_defined_symbols": ["<|im_start|>", "[SEP]"], "control_symbols": ["<|im_end|>"]},
    "bpe, nmt_nfkc": {"model_type": "bpe"},
    "bpe, identity, whitespace kept, byte fallback (train_tokenizer.py)": {
        "model_type": "bpe", "normalization_rule_name": "identity", "remove_extra_whitespaces": False,
        "byte_fallback": True, "split_digits": True, "allow_whitespace_only_pieces": True},
    "bpe, nfkc, no dummy prefix, byte fallback": {
        "model_type": "bpe", "normalization_rule_name": "nfkc", "add_dummy_prefix": False, "byte_fallback": True},
    "bpe, identity, no dummy prefix, whitespace kept": {
        "model_type": "bpe", "normalization_rule_name": "identity", "add_dummy_prefix": False,
        "remove_extra_whitespaces": False},
    "bpe, user-defined and control symbols": {
        "model_type": "bpe", "byte_fallback": True, "user_defined_symbols": ["<|im_start|>", "[SEP]"],
        "control_symbols": ["<|im_end|>"]},
}
REFUSED = {
    "word": ({"model_type": "word"}, "cannot export a sentencepiece model_type=word model"),
    "char": ({"model_type": "char"}, "cannot export a sentencepiece model_type=char model"),
    "nmt_nfkc_cf": ({"normalization_rule_name": "nmt_nfkc_cf"}, "cannot export normalization_rule_name=nmt_nfkc_cf"),
    "symbol the charsmap changes": ({"user_defined_symbols": ["ｶﾀ"]}, "cannot export special piece 'ｶﾀ'"),
}


def _corpus():
    from pydoc_data.topics import topics

    lines = [line for name in sorted(topics)[:12] for line in topics[name].splitlines() if line.strip()]
    return lines[:400] + [line for line in HOSTILE if line.strip()] * 3


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """Trains (once per module) the sentencepiece model of a settings name; returns its path."""
    folder, corpus, cache = tmp_path_factory.mktemp("spm"), _corpus(), {}

    def model(name, settings):
        if name not in cache:
            prefix = str(folder / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=700 if "byte_fallback" in settings
                else 400, hard_vocab_limit=False, character_coverage=0.995, num_threads=1, minloglevel=2,
                pad_id=3, **settings)
            cache[name] = prefix + ".model"
        return cache[name]

    return model


def _score(model, ids):
    from megalite.data.tokenizer import read_spm_proto

    pieces = read_spm_proto(model).pieces
    return sum(pieces[i].score for i in ids)


def _texts(ours):
    from tests.conftest import english_documents

    plain = HOSTILE + english_documents()[:20]
    user = USER if "<|im_start|>" in ours.special_texts else []
    return plain, plain + SPECIAL + user


@pytest.mark.parametrize("name", SETTINGS)
def test_export_encodes_like_sentencepiece(name, train, tmp_path):
    model = train(name, SETTINGS[name])
    sp = spm.SentencePieceProcessor(model_file=model)
    ours = SentencePieceTokenizer(model)
    export_tokenizer(ours, str(tmp_path / "hf"))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    plain, every = _texts(ours)
    for text in plain:
        ids = sp.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == sp.decode(ids)
        assert hf.decode(ids) == sp.decode(ids), text
    theirs = [hf(t, add_special_tokens=False).input_ids for t in every]
    got = ours.encode_batch(every)
    if "unigram" not in name:
        assert got == theirs
    for text, a, b in zip(every, got, theirs):
        if a != b:  # unigram: another segmentation of a run of one character, of the same score
            assert re.search(r"(.)\1{3}", text) and hf.decode(a) == hf.decode(b), text
            assert _score(model, a) == pytest.approx(_score(model, b), abs=1e-4)
    for text in every:
        ids, offsets = ours.encode_with_offsets(text)
        assert ids == ours.encode(text)
        assert all(0 <= a <= b <= len(text) for a, b in offsets)
        whole = set(ours.special_texts.values()) - {ours.unk}  # the model also emits unk for unknown characters
        assert all(text[a:b] == ours.id_to_token(i) for i, (a, b) in zip(ids, offsets) if i in whole)
    for text, i in ours.special_texts.items():
        assert ours.encode(text) == [i] == hf(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("kind", REFUSED)
def test_export_refuses_what_it_cannot_express(kind, train, tmp_path):
    settings, message = REFUSED[kind]
    model = train(kind, settings)
    sp, ours = spm.SentencePieceProcessor(model_file=model), SentencePieceTokenizer(model)
    plain = _texts(ours)[0]
    assert ours.encode_batch(plain) == sp.encode(plain)  # megalite itself still encodes as sentencepiece
    with pytest.raises(MegaliteError, match=f"^{model}: {message}"):
        export_tokenizer(SentencePieceTokenizer(model), str(tmp_path / "hf"))


def test_export_refuses_unused_pieces(train, tmp_path):
    from megalite.data.tokenizer import read_spm_proto

    proto = read_spm_proto(train(*next(iter(SETTINGS.items()))))
    proto.pieces[10].type = 5  # UNUSED: sentencepiece never emits it, tokenizers' Unigram would
    (tmp_path / "unused.model").write_bytes(proto.SerializeToString())
    model = str(tmp_path / "unused.model")
    ours = SentencePieceTokenizer(model)
    assert ours.encode_batch(_texts(ours)[0]) == spm.SentencePieceProcessor(model_file=model).encode(_texts(ours)[0])
    with pytest.raises(MegaliteError, match=f"^{model}: cannot export a sentencepiece model with unused pieces"):
        export_tokenizer(ours, str(tmp_path / "hf"))


def test_whitespace_as_suffix_is_refused(train):
    model = train("suffix", {"treat_whitespace_as_suffix": True})
    with pytest.raises(MegaliteError, match=f"^{model}: a dummy prefix with treat_whitespace_as_suffix"):
        SentencePieceTokenizer(model)


def test_a_file_that_is_not_a_sentencepiece_model(tmp_path):
    for name, data in (("garbage.model", b"\x0f not a model"), ("empty.model", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MegaliteError, match=f"^{tmp_path / name}: not a sentencepiece model$"):
            SentencePieceTokenizer(str(tmp_path / name))
