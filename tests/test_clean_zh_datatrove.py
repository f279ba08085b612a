"""Chinese cleaning decisions against datatrove's with FineWeb-2's Chinese settings, on real
modern Chinese prose (the LibreOffice help pages, Debian's libreoffice-help-zh-cn, MPL-2.0,
which scripts/setup_env.sh unpacks into .cache/): the words (datatrove's
``cmn_Hani`` tokenizer: spaCy's Chinese with jieba) and each filter's keep/remove decision and
reason. Our one deliberate difference, CJK sentence ends in the line rule (a closing quote may
follow the 。, an ellipsis ends a sentence), is turned off for the comparison and counted.

    python tests/test_clean_zh_datatrove.py [N]   # agreement and docs/s per core on N documents (all)
"""

import os
import sys
import time
from collections import Counter

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.sample_corpus_zh import help_articles  # noqa: E402

CMN_HANI = dict(  # FineWeb-2 configs/cmn_Hani.yml, as fineweb-2-pipeline.py passes it to datatrove
    dup_line_frac=0.287, top_n_grams=[(2, 0.256), (3, 0.201), (4, 0.171)],
    dup_n_grams=[(5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154), (9, 0.14), (10, 0.127)],
    line_punct_thr=0.106, new_line_ratio=0.178, max_avg_word_length=5, min_avg_word_length=1,
    max_non_alpha_words_ratio=0.735,
    stopwords=["的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为",
               "他", "與", "後", "也", "而", "由"])


def datatrove_filters():
    from datatrove.pipeline import filters

    c = CMN_HANI
    return {
        "gopher_repetition": filters.GopherRepetitionFilter(
            language="cmn_Hani", dup_para_frac=0, dup_line_char_frac=0, dup_para_char_frac=0,
            dup_line_frac=c["dup_line_frac"], top_n_grams=c["top_n_grams"], dup_n_grams=c["dup_n_grams"]),
        "fineweb": filters.FineWebQualityFilter(
            language="cmn_Hani", short_line_thr=999, char_duplicates_ratio=0.1, line_punct_thr=c["line_punct_thr"],
            new_line_ratio=c["new_line_ratio"]),
        "gopher_quality": filters.GopherQualityFilter(
            language="cmn_Hani", max_avg_word_length=c["max_avg_word_length"],
            min_avg_word_length=c["min_avg_word_length"], stop_words=c["stopwords"],
            max_non_alpha_words_ratio=c["max_non_alpha_words_ratio"], min_stop_words=2),
    }


def our_steps(cjk_sentence_ends: bool):
    from data_tools.clean.steps import build_step

    fineweb = {} if cjk_sentence_ends else {"cjk_sentence_ends": False}
    return {"gopher_repetition": build_step("gopher_repetition", {}), "fineweb": build_step("fineweb", fineweb),
            "gopher_quality": build_step("gopher_quality", {})}


def decisions(steps, texts, datatrove: bool):
    """{step: [reason or None per text]} and the seconds each step took."""
    out, seconds = {}, {}
    for name, step in steps.items():
        started = time.perf_counter()
        if datatrove:
            from datatrove.data import Document

            verdicts = [step.filter(Document(text=t, id=str(i))) for i, t in enumerate(texts)]
            out[name] = [None if v is True else v[1] for v in verdicts]
        else:
            from data_tools.clean.document import Document

            out[name] = [step.process(Document({"text": t, "language": "zh"}, "text", str(i)))
                         for i, t in enumerate(texts)]
        seconds[name] = time.perf_counter() - started
    return out, seconds


@pytest.fixture(scope="module")
def corpus():
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")
    pytest.importorskip("jieba")
    texts = help_articles()
    if texts is None:
        pytest.skip("needs libreoffice-help-zh-cn (scripts/setup_env.sh unpacks it), the corpus")
    return texts[:1000]


def test_chinese_words_equal_datatroves(corpus):
    from datatrove.utils.text import split_into_words

    from data_tools.clean.document import TextView

    differ = []
    for text in corpus:
        view = TextView(text, "jieba")
        ids = view.prop("id").tolist()
        token_of = {i: t for t, i in view.vocab.index.items()}
        ours = [token_of[i] for i in ids]
        if ours != split_into_words(text, "cmn_Hani"):
            differ.append(text[:80])
    assert differ == [], f"{len(differ)} documents split differently, e.g. {differ[:3]}"


def test_chinese_decisions_equal_datatroves(corpus):
    theirs, _ = decisions(datatrove_filters(), corpus, datatrove=True)
    ours, _ = decisions(our_steps(cjk_sentence_ends=False), corpus, datatrove=False)
    differ = [(name, i, ours[name][i], theirs[name][i]) for name in ours for i in range(len(corpus))
              if ours[name][i] != theirs[name][i]]
    assert differ == [], f"{len(differ)} decisions differ, e.g. {differ[:10]}"
    removed = Counter((name, r) for name in ours for r in ours[name] if r)
    assert len(removed) >= 4, removed  # the comparison covers several rules, not only "keep"


def test_cjk_sentence_ends_keep_quoted_endings(corpus):
    """With CJK sentence ends, documents whose lines end in 。” are no longer taken for lists.
    Help pages quote no one, so their sentences are made quoted speech, as in news or fiction."""
    quoted = ["\n".join(f"“{line}”" if line.endswith("。") else line for line in text.split("\n")) for text in corpus]
    fineweb = {name: {"fineweb": steps["fineweb"]} for name, steps in (("plain", our_steps(False)),
                                                                      ("cjk", our_steps(True)))}
    plain = decisions(fineweb["plain"], quoted, datatrove=False)[0]["fineweb"]
    cjk = decisions(fineweb["cjk"], quoted, datatrove=False)[0]["fineweb"]
    changed = [i for i in range(len(corpus)) if plain[i] != cjk[i]]
    assert len(changed) >= 500 and all(plain[i] == "line_punct_ratio" != cjk[i] for i in changed)
    unquoted = decisions(fineweb["cjk"], corpus, datatrove=False)[0]["fineweb"]
    line_rule = [[i for i, r in enumerate(d) if r == "line_punct_ratio"] for d in (cjk, unquoted)]
    assert line_rule[0] == line_rule[1]  # the line rule sees the quoted pages as the plain ones


def main(n) -> None:
    texts = help_articles()[:n]
    theirs, their_s = decisions(datatrove_filters(), texts, datatrove=True)
    ours, our_s = decisions(our_steps(False), texts, datatrove=False)
    cjk, _ = decisions(our_steps(True), texts, datatrove=False)
    for name in ours:
        same = sum(a == b for a, b in zip(ours[name], theirs[name]))
        kept = sum(r is None for r in ours[name])
        print(f"{name:18s} {same}/{len(texts)} equal decisions, {kept} kept | datatrove "
              f"{len(texts) / their_s[name]:8.0f} docs/s, megalite {len(texts) / our_s[name]:8.0f} docs/s"
              f" | reasons {dict(Counter(r for r in ours[name] if r))}")
    print(f"CJK sentence ends change {sum(a != b for a, b in zip(ours['fineweb'], cjk['fineweb']))} fineweb decisions")
    print(f"all three: datatrove {len(texts) / sum(their_s.values()):.0f} docs/s, "
          f"megalite {len(texts) / sum(our_s.values()):.0f} docs/s (one core)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
