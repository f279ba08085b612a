"""Each cleaning filter on hand-written documents just inside and just outside each of its
thresholds (FineWeb's defaults), plus the word splitter and the n-gram counting they share."""

import random
from collections import Counter

import numpy as np
import pytest

from data_tools.clean.document import Document, TextView
from data_tools.clean.steps import build_step
from data_tools.clean.textstats import NGramRepetition
from data_tools.clean.words import VOCAB, split_words
from data_tools.sample_corpus import english_sentences


def verdict(step, text, **record):
    """(removal reason or None, the document's text afterwards)."""
    doc = Document({"text": text, **record}, "text", "t")
    if isinstance(step, str):
        step = build_step(step, {})
    return step.process(doc), doc.text


def words(n, start=0):
    """n distinct filler words of 5 letters (no stop words, no repeats)."""
    out = []
    for i in range(start, start + n):
        w, k = "", i
        for _ in range(4):
            w, k = w + "bcdfghjklmnpqrstvwxz"[k % 20], k // 20
        out.append("w" + w)
    return out


def pad_to(text, length):
    """``text`` grown to exactly ``length`` characters by lengthening its last word."""
    assert len(text) <= length, (len(text), length)
    return text + "y" * (length - len(text))


# --- the word splitter (spaCy's English rules, as datatrove's filters use them) ---------------

@pytest.mark.parametrize("text,tokens", [
    ("Don't stop, Mr. Smith said.", ["Do", "n't", "stop", ",", "Mr.", "Smith", "said", "."]),
    ("The U.S. economy grew 3.5% in 2020, e.g. by $1,000.", ["The", "U.S.", "economy", "grew", "3.5", "%", "in",
                                                           "2020", ",", "e.g.", "by", "$", "1,000", "."]),
    ("“Quoted,” she said — it's O'Neill's well-known car.", ["“", "Quoted", ",", "”", "she", "said", "—", "it", "'s",
                                                            "O'Neill", "'s", "well", "-", "known", "car", "."]),
    ("COVID-19 hit 3-4 towns... I cannot go", ["COVID-19", "hit", "3", "-", "4", "towns", "...", "I", "can", "not",
                                               "go"]),
    ("Mail john@doe.com or see https://example.com/a.", ["Mail", "john@doe.com", "or", "see", "https://example.com/a",
                                                        "."]),
    # news figures the first splitter got wrong (spaCy cuts a unit after a number, keeps "3bn")
    ("It cost £3bn, up 12.5% ($1.2m) in 5km.", ["It", "cost", "£", "3bn", ",", "up", "12.5", "%", "(", "$", "1.2",
                                                 "m", ")", "in", "5", "km", "."]),
    ("A 3-0 win for U.K.-based 7-Eleven…", ["A", "3", "-", "0", "win", "for", "U.K.-based", "7", "-", "Eleven", "…"]),
    ("The 30°C heat: 2.5kg of beef.", ["The", "30", "°", "C", "heat", ":", "2.5", "kg", "of", "beef", "."]),
])
def test_word_splitting_matches_spacy_english(text, tokens):
    assert split_words(text) == tokens


def test_token_ids_and_properties_across_vocabulary_resets():
    """Past ``max_size`` chunks the vocabulary starts afresh; each text's token ids and
    properties are still its own tokens' (chunks of several tokens included)."""
    texts = [f"Doc {i}: £{i}bn, up {i}.5% (U.S.) — it’s {i}km... #{i} don't" for i in range(200)]
    max_size, generation = VOCAB.max_size, VOCAB.generation
    VOCAB.max_size = 40
    try:
        for text in texts:
            view = TextView(text)
            ids = view.prop("id").tolist()
            token_of = {i: t for t, i in VOCAB.index.items()}
            assert [token_of[i] for i in ids] == split_words(text)
            assert view.prop("length").tolist() == [len(t) for t in split_words(text)]
        assert VOCAB.generation > generation + 5
    finally:
        VOCAB.max_size = max_size


def test_ngram_repetition_equals_a_direct_count():
    """Top n-gram and greedy duplicate n-gram characters, against Gopher's rules written plainly."""

    def top(ws, n):
        grams = [" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)]
        gram, count = Counter(grams).most_common(1)[0] if grams else ("", 0)
        return len(gram) * count

    def greedy(ws, n):
        seen, total, i = set(), 0, 0
        while i < len(ws) - n + 1:
            gram = tuple(ws[i:i + n])
            if gram in seen:
                total += sum(map(len, gram))
                i += n
            else:
                seen.add(gram)
                i += 1
        return total

    rng = random.Random(0)
    for _ in range(600):
        vocab = rng.choice([2, 3, 6, 50])
        ws = ["w%d" % rng.randrange(vocab) * rng.randint(1, 3) for _ in range(rng.randint(0, 50))]
        keys = np.array([rng.getrandbits(63) for _ in range(vocab * 3)], np.uint64)
        index = {}
        ng = NGramRepetition(np.array([keys[index.setdefault(w, len(index))] for w in ws], np.uint64),
                             np.array([len(w) for w in ws], np.int64))
        assert [ng.top_chars(n) for n in (2, 3, 4)] == [top(ws, n) for n in (2, 3, 4)], ws
        assert [ng.greedy_duplicate_chars(n) for n in range(5, 11)] == [greedy(ws, n) for n in range(5, 11)], ws


# --- Gopher quality ------------------------------------------------------------------------------

BASE = ["the", "and"] + words(48)  # 50 words, two stop words, mean length 5.64


@pytest.mark.parametrize("inside,outside,reason", [
    (BASE, BASE[:-1], "gopher_short_doc"),  # 50 words / 49
    (["the", "and"] + ["cat"] * 48, ["the", "and"] + ["cat"] * 47 + ["at"], "gopher_below_avg_threshold"),  # 3.0 / 2.98
    (["the", "and"] + ["a" * 11] * 14 + ["a" * 10] * 34,  # mean exactly 10.0 / 10.02
     ["the", "and"] + ["a" * 11] * 15 + ["a" * 10] * 33, "gopher_above_avg_threshold"),
    (BASE + words(4, 100) + ["#"] * 6, BASE + words(4, 100) + ["#"] * 7, "gopher_too_many_hashes"),  # 6/60, 7/61
    (BASE + ["..."] * 6 + words(4, 100), BASE + ["..."] * 7 + words(4, 100), "gopher_too_many_ellipsis"),
    (BASE + ["123"] * 12, BASE + ["123"] * 13, "gopher_below_alpha_threshold"),  # 50/62 = 0.806, 50/63 = 0.794
    (BASE, words(50), "gopher_enough_stop_words"),  # two stop words / none
])
def test_gopher_quality_word_thresholds(inside, outside, reason):
    assert verdict("gopher_quality", " ".join(inside))[0] is None
    assert verdict("gopher_quality", " ".join(outside))[0] == reason


def test_gopher_quality_long_documents():
    text = " ".join(["the and"] + ["house"] * 99_998)
    assert verdict("gopher_quality", text)[0] is None  # exactly 100,000 words
    assert verdict("gopher_quality", text + " house")[0] == "gopher_long_doc"


def lines_of(n, start=0):
    return [" ".join(["the", "and"] + words(4, start + 10 * i)) for i in range(n)]


def test_gopher_quality_bullet_and_ellipsis_lines():
    lines = lines_of(20)
    bullets = lambda k: "\n".join(("- " + ln if i < k else ln) for i, ln in enumerate(lines))  # noqa: E731
    assert verdict("gopher_quality", bullets(18))[0] is None  # 0.90
    assert verdict("gopher_quality", bullets(19))[0] == "gopher_too_many_bullets"  # 0.95
    dots = lambda k: "\n".join((ln + "..." if i < k else ln) for i, ln in enumerate(lines[:10]))  # noqa: E731
    assert verdict("gopher_quality", dots(3))[0] is None  # 0.3
    assert verdict("gopher_quality", dots(4))[0] == "gopher_too_many_end_ellipsis"


# --- Gopher repetition ---------------------------------------------------------------------------

def with_duplicates(n_unique, n_dup, sep):
    """Unique sentences with a short line after each of the first ``n_dup + 1``: the line
    once and ``n_dup`` copies, spread out."""
    out = []
    for i, sentence in enumerate(english_sentences()[:n_unique]):
        out.append(sentence)
        if i <= n_dup:
            out.append("Yes indeed.")
    return sep.join(out)


@pytest.mark.parametrize("sep,reason", [("\n\n", "dup_para_frac"), ("\n", "dup_line_frac")])
def test_gopher_repetition_duplicate_fraction(sep, reason):
    inside = with_duplicates(13, 6, sep)  # 20 parts, 6 of them copies: 0.3
    outside = with_duplicates(12, 7, sep)  # 20 parts, 7 copies: 0.35
    assert len(inside.split(sep)) == len(outside.split(sep)) == 20
    assert verdict("gopher_repetition", inside)[0] is None
    assert verdict("gopher_repetition", outside)[0] == reason


def filler_up_to(length, sep):
    """Lines of distinct filler words joined by ``sep``, grown to exactly ``length`` characters."""
    out = []
    for i in range(length):
        line = " ".join(words(8, 8 * i)) + "."
        if len(sep.join(out + [line])) > length:
            break
        out.append(line)
    return pad_to(sep.join(out), length)


@pytest.mark.parametrize("sep,reason", [("\n\n", "dup_para_char_frac"), ("\n", "dup_line_char_frac")])
def test_gopher_repetition_duplicate_characters(sep, reason):
    # a paragraph of distinct two-letter words, twice; its copy is exactly 20% of the text
    # (wide spacing keeps its repeated n-grams, counted without spaces, under their 10-15%)
    repeated = "   ".join(a + b for a in "bcdfghjklmnpqrstvwxz" for b in "aeiou")
    head = filler_up_to(5 * len(repeated) - 2 * len(repeated) - 2 * len(sep), sep)
    inside = head + sep + repeated + sep + repeated
    assert len(inside) == 5 * len(repeated)
    assert verdict("gopher_repetition", inside)[0] is None
    assert verdict("gopher_repetition", inside[1:])[0] == reason


@pytest.mark.parametrize("phrase,copies,frac,reason", [
    ("golden retriever", 10, 0.20, "top_2_gram"),
    ("golden retriever puppy", 9, 0.18, "top_3_gram"),
    ("golden retriever puppy training", 16, 0.16, "top_4_gram"),
])
def test_gopher_repetition_top_ngram(phrase, copies, frac, reason):
    filler = words(200)
    parts = []
    for i in range(copies):
        parts += [phrase] + filler[4 * i: 4 * i + 4]
    text = " ".join(parts)
    total = round(len(phrase) * copies / frac)  # the top n-gram covers exactly frac of it
    inside = pad_to(text, total)
    assert verdict("gopher_repetition", inside)[0] is None
    assert verdict("gopher_repetition", inside[:-1])[0] == reason


@pytest.mark.parametrize("n,frac,copies", [(5, 0.15, 10), (6, 0.14, 8), (7, 0.13, 14), (8, 0.12, 4), (9, 0.11, 12),
                                           (10, 0.10, 2)])
def test_gopher_repetition_duplicated_ngrams(n, frac, copies):
    phrase = " ".join(w[1:] for w in words(n, 500))  # n words of 4 letters
    filler = words(300)
    parts = []
    for i in range(copies):
        parts += [phrase] + filler[3 * i: 3 * i + 3]
    repeated_chars = (copies - 1) * 4 * n  # every copy after the first, without spaces
    inside = pad_to(" ".join(parts), round(repeated_chars / frac))
    assert verdict("gopher_repetition", inside)[0] is None
    assert verdict("gopher_repetition", inside[:-1])[0] == f"duplicated_{n}_n_grams"


# --- C4 ------------------------------------------------------------------------------------------

SENTENCE_LINES = [s for s in english_sentences() if s.count(". ") == 0][:20]


def test_c4_sentence_count():
    assert verdict("c4", "\n".join(SENTENCE_LINES[:5]))[0] is None
    assert verdict("c4", "\n".join(SENTENCE_LINES[:4]))[0] == "too_few_sentences"
    # several sentences on one line count separately
    assert verdict("c4", " ".join(SENTENCE_LINES[:3]) + "\n" + " ".join(SENTENCE_LINES[3:5]))[0] is None


def test_c4_drops_lines_and_keeps_the_rest():
    body = SENTENCE_LINES[:5]
    text = "\n".join(["Two words", "Three short words", "  " + body[0] + "  ", "Enable javascript to see this page.",
                      body[1] + "[1]", "This site uses cookies to work well.", body[2], "word " + "x" * 1001 + " end",
                      "ok " + "y" * 1000 + " end", body[3], body[4] + "[edit]", "{ two", ""])
    reason, out = verdict("c4", text)
    assert reason is None
    assert out.split("\n") == ["Three short words", body[0], body[1], body[2], "ok " + "y" * 1000 + " end",
                               body[3], body[4]]


@pytest.mark.parametrize("line,reason", [("Lorem ipsum dolor sit amet.", "lorem_ipsum"),
                                         ("if (x) { return y; }", "curly_bracket")])
def test_c4_removes_whole_documents(line, reason):
    assert verdict("c4", "\n".join(SENTENCE_LINES[:6] + [line]))[0] == reason


def test_c4_terminal_punctuation_option():
    c4 = build_step("c4", {"filter_no_terminal_punct": True})
    reason, out = verdict(c4, "\n".join(SENTENCE_LINES[:5] + ["No full stop at the end", "It trails off..."]))
    assert reason is None and out == "\n".join(SENTENCE_LINES[:5])
    assert verdict(c4, "\n".join(SENTENCE_LINES[:4] + ["No full stop at the end"]))[0] == "too_few_sentences"


# --- FineWeb -------------------------------------------------------------------------------------

def fw_lines(n, end="", start=0):
    """Lines of 6 words, over 30 characters, ending in ``end``."""
    return [" ".join(words(6, start + 6 * i)) + end for i in range(n)]


def test_fineweb_line_punctuation():
    inside = fw_lines(12, ".") + fw_lines(88, "", 1000)  # 0.12
    outside = fw_lines(11, ".") + fw_lines(89, "", 1000)
    assert verdict("fineweb", "\n".join(inside))[0] is None
    assert verdict("fineweb", "\n".join(outside))[0] == "line_punct_ratio"


def test_fineweb_short_lines():
    short = [f"{w} ok." for w in words(100, 3000)]  # 9 characters, 3 tokens
    inside = short[:67] + fw_lines(33, ".")
    outside = short[:68] + fw_lines(32, ".")
    assert verdict("fineweb", "\n".join(inside))[0] is None
    assert verdict("fineweb", "\n".join(outside))[0] == "short_line_ratio"


def test_fineweb_duplicated_line_characters():
    dup = "Repeated line number one here."
    unique = "\n".join(fw_lines(80, "."))
    unique = pad_to(unique, 98 * len(dup) + unique.count("\n"))  # unique lines hold 98x the line
    inside = unique + "\n" + dup + "\n" + dup  # the copy is exactly 1% of the non-newline characters
    assert len(inside) - inside.count("\n") == 100 * len(dup)
    assert verdict("fineweb", inside)[0] is None
    assert verdict("fineweb", inside[1:])[0] == "char_dup_ratio"


def test_fineweb_list_ratio():
    def doc(n_lines, n_tokens):  # the first lines end in ".", so every line is long and some punctuated
        per = [n_tokens // n_lines + (i < n_tokens % n_lines) for i in range(n_lines)]
        out, k = [], 0
        for i, t in enumerate(per):
            ws = ["x" * 12 + w for w in words(t - 1, k)] + ["."]
            k += t
            out.append(" ".join(ws))
        return "\n".join(out)

    assert verdict("fineweb", doc(31, 100))[0] is None  # 30 newlines / 100 tokens
    assert verdict("fineweb", doc(32, 100))[0] == "list_ratio"  # 31 / 100


# --- length, URL, PII, normalisation -------------------------------------------------------------

def test_length_filter():
    step = build_step("length", {"min_chars": 10, "max_chars": 20, "min_words": 2, "max_words": 4})
    assert verdict(step, "abcd efghi")[0] is None
    assert verdict(step, "abcd efgh")[0] == "too_few_chars"
    assert verdict(step, "abcd efgh ijkl mnopq")[0] is None  # 20 characters
    assert verdict(step, "abcd efgh ijkl mnopqr")[0] == "too_many_chars"
    assert verdict(step, "abcdefghijk")[0] == "too_few_words"
    assert verdict(step, "ab cd ef gh ij")[0] == "too_many_words"


def test_url_filter(tmp_path):
    blocklist = tmp_path / "domains.txt"
    blocklist.write_text("# spam domains\nbad-site.com\nsub.example.org\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("https://good.com/exact/page\n")
    step = build_step("url_filter", {"domain_blocklists": [str(blocklist)], "url_blocklists": [str(urls)],
                                     "banned_words": ["porn"], "banned_subwords": ["casino"],
                                     "soft_banned_words": ["free", "win", "cash"], "soft_word_threshold": 2})
    check = lambda url: verdict(step, "text", url=url)[0]  # noqa: E731
    assert check("https://www.bad-site.com/x") == "blocked_domain"
    assert check("https://sub.example.org/x") == "blocked_subdomain"
    assert check("https://other.example.org/x") is None
    assert check("https://good.com/exact/page") == "blocked_url"
    assert check("https://good.com/exact/page2") is None
    assert check("https://porn.example.net/") == "banned_word"
    assert check("https://pornography.example.net/") is None  # a word, not a part of one
    assert check("https://bestcasinos.example.net/") == "banned_subword"
    assert check("https://example.net/free-gift") is None  # one soft word
    assert check("https://example.net/free-cash") == "soft_banned_words"
    assert verdict(step, "text")[0] is None and step.counters["no_url"] == 1


def test_pii_redaction_counts():
    step = build_step("pii", {})
    reason, out = verdict(step, "Write to jane.doe@mail.com or bob@x.org. Server 8.8.8.8 and 192.168.0.1. "
                                "Call +1 555 123 4567 or (555) 123-4567. Founded 1990 2000, on 2020-01-15.")
    assert reason is None
    assert "jane.doe@mail.com" not in out and "bob@x.org" not in out and "8.8.8.8" not in out
    assert "192.168.0.1" in out  # private addresses are not personal data
    assert "555" not in out and "1990 2000" in out and "2020-01-15" in out
    assert dict(step.counters) == {"emails": 2, "ip_addresses": 1, "phone_numbers": 2, "documents_redacted": 1}


def test_normalize():
    reason, out = verdict("normalize", "Cafe\u0301  au\tlait \r\nline two  \r\n\n\n\nend\x00 ")
    assert reason is None and out == "Café au lait\nline two\n\nend"
    assert verdict("normalize", " \n\t ")[0] == "empty"
