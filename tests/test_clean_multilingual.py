"""Chinese, Japanese and mixed documents through the cleaning steps: each language's words,
stop words and thresholds (FineWeb-2's for Chinese and Japanese), CJK sentence ends,
full-width text, MinHash on Chinese near-duplicates, and Chinese PII."""

import json
import random

import pytest

from data_tools.clean.cjk import normalize_width
from data_tools.clean.config import parse_config
from data_tools.clean.document import Document, TextView
from data_tools.clean.executor import run_pipeline
from data_tools.clean.languages import RULES, rules_for
from data_tools.clean.steps import build_step, language
from data_tools.clean.steps.pii import valid_cn_id
from data_tools.sample_corpus_zh import (
    JAPANESE,
    help_articles,
    mojibake,
    navigation_page,
    news_article,
    repeated_lines_page,
    spam_page,
)
from megalite.errors import MegaliteError
from tests.conftest import write_jsonl
from tests.test_clean_dedup import removed_ids

jieba = pytest.importorskip("jieba")
QUALITY = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def first_removal(text, detected, steps=QUALITY, **params):
    """(step, reason) of the first quality step that removes the document, whose detected
    language is ``detected``, or None."""
    doc = Document({"text": text, "language": detected}, "text", "t")
    for name in steps:
        reason = build_step(name, dict(params)).process(doc)
        if reason:
            return name, reason
    return None


def test_chinese_pages_get_the_decisions_a_reader_expects():
    rng = random.Random(3)
    for _ in range(20):
        assert first_removal(news_article(rng), "zh") is None
    assert first_removal(navigation_page(rng), "zh") == ("gopher_quality", "gopher_enough_stop_words")
    assert first_removal(spam_page(rng), "zh")[1].startswith("top_")
    assert first_removal(repeated_lines_page(rng), "zh") == ("gopher_repetition", "dup_line_frac")
    garbled = [first_removal(mojibake(news_article(rng)), "zh") for _ in range(20)]
    assert all(garbled), garbled


def test_english_rules_would_drop_chinese_news():
    """What the per-language rules fix: by English rules a Chinese paragraph is a few long "words"."""
    article = news_article(random.Random(4))
    assert first_removal(article, "en") is not None
    assert first_removal(article, "en", language="zh") is None  # a step's language overrides the document's


def test_japanese_and_mixed_documents():
    assert first_removal(JAPANESE, "ja") is None
    assert first_removal("\n".join(["ホーム | ニュース | お問い合わせ | サイトマップ"] * 3 + ["ログイン"] * 5), "ja")
    mixed = (news_article(random.Random(5)) + "\n苹果公司发布了 iPhone 16 Pro，分析师认为 Apple Intelligence 将带动"
             "今年的销量。The new chip is built on a 3 nm process.")
    assert first_removal(mixed, "zh") is None


def test_per_language_thresholds_are_fineweb2s():
    step = build_step("gopher_quality", {})
    zh, en = step.settings_for("zh"), step.settings_for("en")
    assert (zh.min_avg_word_length, zh.max_avg_word_length, zh.min_alpha_words_ratio) == (1, 5, 0.735)
    assert "的" in zh.stop_words and len(zh.stop_words) == 22 and zh.min_doc_words == 50
    assert (en.min_avg_word_length, en.max_avg_word_length, en.stop_words[:2]) == (3, 10, ["and", "be"])
    assert build_step("gopher_quality", {"min_stop_words": 5}).settings_for("zh").min_stop_words == 5
    rep = build_step("gopher_repetition", {}).settings_for("ja")
    assert rep.dup_line_frac == 0.375 and rep.top_n_grams[0] == (2, 0.121) and rep.dup_para_frac is None
    fw = build_step("fineweb", {}).settings_for("zh")
    assert (fw.line_punct_thr, fw.new_line_ratio, fw.char_duplicates_ratio, fw.short_line_thr) == (0.106, 0.178, 0.1,
                                                                                                    None)
    assert rules_for("cmn_Hani") is RULES["zh"] and rules_for("zh-Hant") is RULES["zh"]
    assert rules_for("fr") is RULES["en"] and rules_for(None) is RULES["en"]
    with pytest.raises(Exception, match="below every dup_n_grams"):
        build_step("gopher_repetition", {"top_n_grams": {5: 0.1}})


def test_per_language_language_id_minimums(monkeypatch):
    """``threshold: per_language``: each detected language must score above its own minimum
    (FineWeb-2's 0.692 for Chinese, 0.886 for Japanese; FineWeb's 0.65 for English)."""
    assert (RULES["zh"].language_score, RULES["ja"].language_score, RULES["en"].language_score) == (0.692, 0.886, 0.65)

    class Scores:  # the language-ID model's answer is the document's text: "zh 0.67"
        def scores(self, text, k):
            lang, score = text.split()
            return [(lang, float(score))][:k]

    monkeypatch.setitem(language.BACKENDS, "stub", Scores)
    language.load_backend.cache_clear()
    per_language = build_step("language", {"languages": None, "threshold": "per_language", "backend": "stub"})
    fixed = build_step("language", {"languages": None, "threshold": 0.65, "backend": "stub"})
    for text, want in [("zh 0.67", "low_language_score"), ("zh 0.70", None), ("ja 0.85", "low_language_score"),
                       ("ja 0.9", None), ("en 0.66", None), ("fr 0.66", None), ("en 0.6", "low_language_score")]:
        assert per_language.process(Document({"text": text}, "text", "t")) == want, text
        assert fixed.process(Document({"text": text}, "text", "t")) == (None if float(text[3:]) > 0.65 else want)
    language.load_backend.cache_clear()
    with pytest.raises(MegaliteError, match=r"threshold must be in \[0, 1\) or .per_language."):
        build_step("language", {"threshold": "fineweb"})


def test_chinese_words_are_jiebas():
    text = "中共中央总书记、国家主席发表新年讲话。\n记者从北京市政府了解到 iPhone 16 的售价。"
    view = TextView(text, "jieba")
    ids = view.prop("id").tolist()
    token_of = {i: t for t, i in view.vocab.index.items()}
    assert [token_of[i] for i in ids] == [w for w in jieba.cut(text) if w.strip()]
    assert view.prop("line").tolist()[-1] == 1 and view.n_words == len(ids)


def test_chinese_sentence_ends_for_the_line_rules():
    lines = ["“我们会认真听取大家的意见。”他说。", "他说：“好。”", "未完待续……", "标题没有标点"]
    text = "\n".join(lines * 20)
    zh = build_step("fineweb", {"char_duplicates_ratio": None, "new_line_ratio": None, "line_punct_thr": 0.7})
    assert zh.process(Document({"text": text, "language": "zh"}, "text", "t")) is None  # 3 of 4 lines end
    plain = build_step("fineweb", {"char_duplicates_ratio": None, "new_line_ratio": None, "line_punct_thr": 0.7,
                                   "cjk_sentence_ends": False})
    assert plain.process(Document({"text": text, "language": "zh"}, "text", "t")) == "line_punct_ratio"
    c4 = build_step("c4", {"filter_no_terminal_punct": True, "min_num_sentences": -1})
    doc = Document({"text": text, "language": "zh"}, "text", "t")
    assert c4.process(doc) is None and "标题没有标点" not in doc.text and "他说：“好。”" in doc.text


def test_width_normalisation():
    assert normalize_width("１９９８年，ＡＢＣ公司　发布了ｉＰｈｏｎｅ。") == "1998年，ABC公司 发布了iPhone。"
    assert normalize_width("ｶﾞｲﾄﾞ｡") == "ガイド。"
    doc = Document({"text": "售价１２３元！"}, "text", "t")
    build_step("normalize", {}).process(doc)
    assert doc.text == "售价123元！"


def test_minhash_finds_planted_chinese_near_duplicates(tmp_path):
    """As the English test, on real Chinese pages (the LibreOffice help, Debian's
    libreoffice-help-zh-cn): near-copies with 1-4 characters edited, found through character
    5-gram shingles. Help pages share paragraphs, so the pages' own near-copies are removed
    first: only the planted ones are expected."""
    articles = help_articles()
    if articles is None:
        pytest.skip("needs libreoffice-help-zh-cn (scripts/setup_env.sh unpacks it), the corpus")
    rng = random.Random(11)
    pages = [{"id": f"p{i}", "text": a} for i, a in enumerate(a for a in articles if len(a) >= 300)][:400]
    run_pipeline(parse_config({"input": [write_jsonl(tmp_path / "pages.jsonl", pages)],
                               "output": str(tmp_path / "pages"), "steps": ["minhash_dedup"]}))
    own = removed_ids(tmp_path / "pages", "01-minhash_dedup")
    articles = [p["text"] for p in pages if p["id"] not in own][:300]  # page-sized: 1-4 edits are a small change
    assert len(articles) == 300
    docs = [{"id": f"a{i}", "text": text, "group": i} for i, text in enumerate(articles)]
    for k, i in enumerate(rng.sample(range(300), 100)):
        chars = list(docs[i]["text"])
        for p in rng.sample(range(len(chars)), rng.randint(1, 4)):
            chars[p] = rng.choice("的一是在不了有和人这中大为上个国我以要他")
        docs.append({"id": f"n{k}", "text": "".join(chars), "group": i})
    rng.shuffle(docs)
    files = [write_jsonl(tmp_path / f"part{s}.jsonl", docs[s::2]) for s in range(2)]
    order = docs[0::2] + docs[1::2]
    seen, expected = set(), set()
    for d in order:
        if d["group"] in seen:
            expected.add(d["id"])
        seen.add(d["group"])
    run_pipeline(parse_config({"input": files, "output": str(tmp_path / "out"), "steps": ["minhash_dedup"]}))
    removed = removed_ids(tmp_path / "out", "01-minhash_dedup")
    hits = len(removed & expected)
    recall, precision = hits / len(expected), hits / max(len(removed), 1)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)


def id_number(rng, valid=True):
    body = f"{rng.randint(110000, 659999)}{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" \
           f"{rng.randint(0, 999):03d}"
    total = sum(int(c) * w for c, w in zip(body, (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)))
    check = "10X98765432"[total % 11]
    return body + (check if valid else "10X98765432"[(total + 1) % 11])


def test_chinese_pii_redacted_and_ordinary_numbers_left():
    rng = random.Random(2)
    ids = [id_number(rng) for _ in range(50)]
    assert all(valid_cn_id(i) for i in ids) and not any(valid_cn_id(id_number(rng, False)) for _ in range(50))
    pii = build_step("pii", {})
    text = (f"联系人张先生，手机13812345678，备用+86 139 1234 5678，身份证号{ids[0]}。"
            f"另一位的证件号码为{ids[1].lower()}，电话 0086-15012345678。")
    doc = Document({"text": text}, "text", "t")
    pii.process(doc)
    assert doc.text == ("联系人张先生，手机<phone>，备用<phone>，身份证号<id_number>。"
                        "另一位的证件号码为<id_number>，电话 <phone>。")
    assert pii.counters["chinese_mobiles"] == 3 and pii.counters["chinese_ids"] == 2
    # ordinary figures of news text: none may be taken for PII
    ordinary = []
    for _ in range(2000):
        ordinary += [f"{rng.randint(1, 10**9):,}", f"{rng.randint(1, 99999)}.{rng.randint(0, 99):02d}",
                     f"{rng.randint(1990, 2030)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
                     f"{rng.randint(1990, 2030)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                     str(rng.randint(10**9, 10**10 - 1)), str(rng.randint(10**11, 10**12 - 1)),
                     str(rng.randint(10**17, 10**18 - 1))]
    doc = Document({"text": "，".join(ordinary)}, "text", "t")
    pii = build_step("pii", {"phone_numbers": False})
    pii.process(doc)
    false_positives = sum(pii.counters.values()) - pii.counters["documents_redacted"]
    # random 18-digit numbers pass the date and checksum rules ~1 time in 10,000
    assert false_positives <= 2, (false_positives, len(ordinary))


def test_report_names_the_rules_each_document_got(tmp_path):
    rng = random.Random(6)
    english = ("The city council met on Monday to discuss the new transport plan, and the mayor said that the "
               "changes would be made over the next two years. ") * 6
    docs = [{"id": f"z{i}", "text": news_article(rng)} for i in range(6)] + [{"id": "e", "text": english}]
    files = [write_jsonl(tmp_path / "in.jsonl", docs)]
    steps = [{"language": {"languages": ["zh", "en"]}}, "gopher_quality"]
    run_pipeline(parse_config({"input": files, "output": str(tmp_path / "out"), "steps": steps}))
    report = json.load(open(tmp_path / "out" / "report.json"))
    row = [r for r in report["steps"] if r["step"].endswith("gopher_quality")][0]
    assert row["counters"] == {"rules=zh": 6, "rules=en": 1}
    assert "rules=zh: 6" in open(tmp_path / "out" / "report.txt").read()

