"""Cleaning decisions equal datatrove's on real-world web text patterns.

datatrove's filters (what FineWeb was cleaned with) and spaCy's English tokenizer, which they
count words with, run beside ours on tests/clean_corpus.py's documents: the word splits, each
filter's keep/remove decision, its reason and the text C4 keeps must be the same on every
document. Before megalite carried spaCy's rules over as tables (english_tokenizer_tables.py),
gopher_quality disagreed with datatrove on 220 of these 3,000 documents (257 differed in
some filter).

    python tests/test_clean_datatrove.py --write-tables   # rewrite english_tokenizer_tables.py from spaCy
"""

import functools
import json
import os
import random
import re
import sys
import textwrap
from collections import Counter

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clean_corpus import realworld_corpus  # noqa: E402

TABLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_tools", "clean",
                      "english_tokenizer_tables.py")
TABLES_DOC = """spaCy's English tokenizer rules as data (spaCy 3.8), for data_tools/clean/english_tokenizer.py.

Written by `python tests/test_clean_datatrove.py --write-tables`; tests/test_clean_datatrove.py
checks it equals the installed spaCy's. Character classes are inclusive code point ranges;
the lists are regex pieces; exceptions map a chunk to the tokens it is split into.
"""

# (our step, its parameters, datatrove's filter class, its parameters): the same thresholds
CONFIGS = [
    ("gopher_repetition", {}, "GopherRepetitionFilter", {}),
    ("gopher_quality", {}, "GopherQualityFilter", {}),
    ("gopher_quality", {"max_doc_words": 300}, "GopherQualityFilter", {"max_doc_words": 300}),
    ("c4", {}, "C4QualityFilter", {"filter_no_terminal_punct": False}),
    ("c4", {"filter_no_terminal_punct": True}, "C4QualityFilter", {}),
    ("fineweb", {}, "FineWebQualityFilter", {}),
]
# every rule of every filter removes some document of the corpus (and each keeps some)
REASONS = {
    "gopher_repetition": {"empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
                          "top_2_gram", "top_3_gram", "top_4_gram"} | {f"duplicated_{n}_n_grams" for n in range(5, 11)},
    "gopher_quality": {"gopher_short_doc", "gopher_long_doc", "gopher_below_avg_threshold",
                       "gopher_above_avg_threshold", "gopher_too_many_hashes", "gopher_too_many_ellipsis",
                       "gopher_too_many_bullets", "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold",
                       "gopher_enough_stop_words"},
    "c4": {"too_few_sentences", "lorem_ipsum", "curly_bracket"},
    "fineweb": {"empty", "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio"},
}


@pytest.fixture(scope="module")
def corpus():
    pytest.importorskip("spacy")
    return realworld_corpus(3000)


@pytest.fixture(scope="module", autouse=True)
def datatrove_splits_each_text_once():
    """datatrove memoizes its spaCy splits (lru_cache(5) on split_into_parts); with room for
    the whole corpus each document is tokenized once for all the filters and tests here
    instead of once per filter: spaCy is most of this module's time."""
    try:
        from datatrove.utils import text
    except ImportError:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(text, "split_into_parts", functools.lru_cache(maxsize=None)(text.split_into_parts.__wrapped__))
        yield


def _ranges(cls: str):
    r = re.compile("[" + cls + "]")
    cps = [c for c in range(0x110000) if r.match(chr(c))]
    out, start, prev = [], cps[0], cps[0]
    for c in cps[1:]:
        if c != prev + 1:
            out.append([start, prev])
            start = c
        prev = c
    return out + [[start, prev]]


def spacy_tables():
    """spaCy's English tokenizer rules as english_tokenizer.json holds them."""
    import spacy
    from spacy.lang import char_classes as cc
    from spacy.lang.tokenizer_exceptions import URL_PATTERN
    from spacy.symbols import ORTH

    rules = spacy.blank("en").tokenizer.rules
    return {
        "alpha": _ranges(cc.ALPHA), "lower": _ranges(cc.ALPHA_LOWER), "upper": _ranges(cc.ALPHA_UPPER),
        "icons": _ranges(cc.ICONS), "quotes": cc.LIST_QUOTES, "punct": cc.LIST_PUNCT, "currency": cc.LIST_CURRENCY,
        "units": cc.LIST_UNITS, "hyphens": cc.LIST_HYPHENS, "url": "(?u)" + URL_PATTERN,
        "exceptions": {k: [d[ORTH] for d in v] for k, v in sorted(rules.items())},
    }


def write_tables():
    tables = spacy_tables()
    lines = []
    for k, v in tables.items():
        if k != "exceptions":
            text = json.dumps(v, ensure_ascii=False)
            wrapped = textwrap.wrap(text, 110, break_long_words=False) if isinstance(v[0], list) else [text]
            lines += [f"    {json.dumps(k)}: {wrapped[0]}"] + [f"        {w}" for w in wrapped[1:]]
            lines[-1] += ","
    lines += ['    "exceptions": {'] + [
        f"        {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)},"
        for k, v in tables["exceptions"].items()]
    with open(TABLES, "w", encoding="utf-8") as f:
        f.write(f'"""{TABLES_DOC}"""\n\n# fmt: off\nTABLES = {{\n' + "\n".join(lines) + "\n    },\n}\n")


def test_tokenizer_tables_equal_spacys():
    pytest.importorskip("spacy")
    from data_tools.clean.english_tokenizer_tables import TABLES as ours

    assert ours == spacy_tables()


def test_word_splits_equal_datatroves(corpus):
    """Every document's words, as datatrove's English word tokenizer (spaCy) splits them; and
    chunks made around every character spaCy's rules name, in the contexts its rules look at."""
    pytest.importorskip("datatrove")
    import spacy
    from datatrove.utils.text import split_into_words

    from data_tools.clean.words import split_chunk, split_words

    differ = [i for i, text in enumerate(corpus) if split_words(text) != split_into_words(text, "eng")]
    assert differ == [], f"{len(differ)} documents split differently, e.g. {corpus[differ[0]]!r}"

    tables = spacy_tables()
    chars = {chr(a) for key in ("alpha", "lower", "upper", "icons") for a, b in tables[key] for a in (a, b)}
    chars |= {c for key in ("quotes", "punct", "currency", "units", "hyphens") for p in tables[key]
              for c in p.replace("\\", "")} | set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~°²³µ§¶…‘’“”—–•·")
    chunks = {f.format(c) for c in chars for f in ("a{}b", "A{}B", "1{}2", "{}a", "a{}", "AB{}", "1{}", "{}1",
                                                   "{0}{0}", "a{}.", "({})", "x.{}", "{}'s", "a{}-b", "a-{}")}
    chunks |= {k + p for k in tables["exceptions"] for p in ("", ".", ",", ")", "'s")}
    chunks |= {"(" + k for k in tables["exceptions"]}
    # words and numbers between brackets, quotes and closing marks, next to special cases
    opening = ["", "(", "[", "“", "‘", '"', "«", "$", "($", "“$", "'"]
    cores = ["word", "Word", "WORD", "US", "U", "x", "3", "3.5", "1,000", "em", "s", "a", "ll", "nt", "co", "vs", "Mr",
             "m", "am", "A", "i", "e", "nuff", "cause", "Cause", "bout", "d", "re", "S", "im", "ol", "doin", "n", "t",
             "Zoë", "Øst", "ß", "за", "КРАЛ", "ἐφα", "Ω", "中文", "ツー", "ä", "ü", "ǅ", "ʰ", "x²", "ⅻ", "١٢"]
    marks = [""] + list(",;:!?.)]”\"»’'")
    chunks |= {o + c + a + b for o in opening for c in cores for a in marks for b in marks if a or not b}
    nlp = spacy.blank("en")
    differ = [(c, split_chunk(c), [t.text for t in nlp(c)]) for c in sorted(chunks) if c.split() == [c]]
    differ = [d for d in differ if d[1] != d[2]]
    assert differ == [], f"{len(differ)} chunks split differently, e.g. {differ[:5]}"


def test_special_cases_across_chunks_split_as_datatrove():
    """spaCy matches its special cases (``''``, ``:)``, ``'s``) over the whole text, so a
    token one space away can stop a join inside a chunk ("e.ga' ''w": ``'`` ``'`` ``'``):
    texts of the pieces those rules are made of, as datatrove splits them and as the filters
    see them (the document's token ids)."""
    pytest.importorskip("datatrove")
    from datatrove.utils.text import split_into_words

    from data_tools.clean.document import TextView
    from data_tools.clean.words import VOCAB, split_words

    pieces = ["'", "''", "'s", "s", "a", "w", "e.ga", "c", ".", ":", ")", "(", "-", "_", "^", "o", "0", "<", "3", "=",
              "D", "C++", "\\", "\")", "ツ", "/", "and", "or", "a.", "p.m", "em", "cause", "10", "°", "n't", "do", "ca"]
    rng = random.Random(0)
    differ = []
    for _ in range(20000):
        gaps = ["", "", " ", " ", "\n", "  "]
        text = "".join(rng.choice(pieces) + rng.choice(gaps) for _ in range(rng.randint(1, 12)))
        theirs = split_into_words(text, "eng")
        ids = TextView(text).prop("id").tolist()
        token_of = {i: t for t, i in VOCAB.index.items()}
        if split_words(text) != theirs or [token_of[i] for i in ids] != theirs:
            differ.append((text, split_words(text), theirs))
    assert differ == [], f"{len(differ)} texts split differently, e.g. {differ[:3]}"


def test_decisions_reasons_and_kept_text_equal_datatroves(corpus):
    """Each filter alone on each document: remove or keep, the reason, and the text C4 keeps,
    against datatrove's filter with the same thresholds. Reasons are datatrove's strings."""
    pytest.importorskip("datatrove")
    from datatrove.data import Document as DatatroveDocument
    from datatrove.pipeline import filters

    from data_tools.clean.document import Document
    from data_tools.clean.steps import build_step

    differ, seen = [], Counter()
    for step_name, params, theirs_name, their_params in CONFIGS:
        theirs = getattr(filters, theirs_name)(**their_params)
        ours = build_step(step_name, dict(params))
        for i, text in enumerate(corpus):
            doc, their_doc = Document({"text": text}, "text", str(i)), DatatroveDocument(text=text, id=str(i))
            reason = ours.process(doc)
            verdict = theirs.filter(their_doc)
            their_reason = None if verdict is True else verdict[1]
            seen[step_name, reason] += 1
            if reason != their_reason or (reason is None and doc.text != their_doc.text):
                differ.append((step_name, params, i, reason, their_reason))
    assert differ == [], f"{len(differ)} decisions differ from datatrove's, e.g. {differ[:10]}"
    for step_name, reasons in REASONS.items():
        assert {r for (s, r) in seen if s == step_name} == reasons | {None}, step_name


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-tables"]:
        write_tables()
