"""Tokenizer training on mixed Chinese-English text: the options that matter there, and the
characters per token of each language."""

import json
import random

import pytest

from data_tools.sample_corpus import english_sentences
from data_tools.sample_corpus_zh import JAPANESE, news_article
from data_tools.train_tokenizer import script_language
from tests.conftest import run_tool, write_jsonl

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def mixed_jsonl(tmp_path_factory):
    rng = random.Random(0)
    sents = english_sentences()
    docs = [{"text": news_article(rng)} for _ in range(300)]
    docs += [{"text": " ".join(rng.choice(sents) for _ in range(8))} for _ in range(300)]
    rng.shuffle(docs)
    return write_jsonl(tmp_path_factory.mktemp("mixed") / "mixed.jsonl", docs)


def train(tmp_path, corpus, *flags):
    run_tool("data_tools/train_tokenizer.py", "--input", corpus, "--vocab-size", "1500", "--output-dir",
             str(tmp_path), "--report", str(tmp_path / "report.json"), *flags)
    return (spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model")),
            json.load(open(tmp_path / "report.json"))["chars_per_token"])


def test_mixed_options_and_chars_per_token(tmp_path, mixed_jsonl):
    sp, report = train(tmp_path, mixed_jsonl, "--character-coverage", "0.9995", "--max-piece-length", "3")
    assert set(report) == {"zh", "other"} and report["zh"]["documents"] == 300
    assert 1.0 < report["zh"]["chars_per_token"] < report["other"]["chars_per_token"]
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_byte(i) or sp.is_control(i)
                                                                            or sp.is_unknown(i))]
    assert max(map(len, pieces)) == 3
    text = "2024年，龘字很少见。"
    assert [p for p in sp.encode(text, out_type=str) if p.strip("▁").isdigit()] == ["2", "0", "2", "4"]
    assert sp.decode(sp.encode(text)) == text  # the rare 龘 is spelled in bytes
    assert any(sp.is_byte(i) for i in sp.encode("龘"))


def test_no_byte_fallback_and_whole_numbers(tmp_path, mixed_jsonl):
    sp, _ = train(tmp_path, mixed_jsonl, "--no-byte-fallback", "--no-split-digits")
    assert sp.unk_id() in sp.encode("龘")
    assert not any(sp.is_byte(i) for i in range(sp.get_piece_size()))


def test_script_language():
    assert script_language(news_article(random.Random(1))) == "zh"
    assert script_language(JAPANESE) == "ja"
    assert script_language("The 2024 iPhone 发布会 was held in Cupertino on Monday.") == "other"


def test_bad_option_is_one_line(tmp_path, mixed_jsonl):
    proc = run_tool("data_tools/train_tokenizer.py", "--input", mixed_jsonl, "--vocab-size", "600",
                    "--output-dir", str(tmp_path), "--character-coverage", "1.5", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --character-coverage must be in (0, 1], not 1.5"
