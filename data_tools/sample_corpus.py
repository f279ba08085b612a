"""Write a raw web-like corpus built from real English prose, to try the cleaning pipeline on.

    python data_tools/sample_corpus.py --output-dir raw/ [--docs 2000] [--seed 0]

writes raw/pages.warc.gz (HTML pages with navigation, scripts, cookie banners and footers
around news-length articles, plus a few non-HTML records), raw/articles.jsonl.gz (plain-text
documents with a ``url``: articles, planted near-duplicates and exact copies, pages that
quality filters remove, other languages, a few malformed lines) and raw/notes/*.txt.

The sentences are the documentation prose that ships with CPython (``pydoc_data``), so the
corpus needs no download and its text is real English; documents are new arrangements of
those sentences. The same generators build the benchmark and test corpora.
"""

import argparse
import gzip
import html
import io
import json
import os
import random
import re
from functools import lru_cache
from typing import List, Sequence, Tuple

from megalite.utils.cli import run_tool

_BULLET = re.compile(r"^\s*\*\s+")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")


@lru_cache(maxsize=1)
def english_sentences() -> Tuple[str, ...]:
    """Prose sentences from CPython's documentation topics (about 3,000)."""
    from pydoc_data.topics import topics

    sentences = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            if not para.strip() or (para[:1].isspace() and not _BULLET.match(para)):
                continue  # code blocks and grammar rules are indented
            flat = " ".join(_BULLET.sub("", para).split())
            for s in _SENTENCE_END.split(flat):
                letters = sum(c.isalpha() or c == " " for c in s)
                if 40 <= len(s) <= 300 and s[0].isupper() and s.endswith(".") and letters > 0.9 * len(s) \
                        and s.count('"') <= 2 and not set(s) & set("{}<>=|\\()[]*_"):
                    sentences.append(s)
    return tuple(dict.fromkeys(sentences))


def title(rng: random.Random, sentences: Sequence[str]) -> str:
    words = rng.choice(sentences).rstrip(".").split()[: rng.randint(4, 9)]
    return " ".join(w.capitalize() if len(w) > 3 else w for w in words)


_SYLLABLES = "ka lo mi ren sa tor vel da ni shu ber an gol fi mar pe ros tin wen ya".split()
_ORGS = ("the city council", "the ministry", "the university", "the company", "the agency", "the court")


def _name(rng: random.Random) -> str:
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(2))


def _figure(rng: random.Random) -> str:
    return rng.choice([f"{rng.randint(2, 99)} percent", f"${rng.randint(1, 999)}.{rng.randint(1, 9)} million",
                       f"{rng.randint(1000, 99999):,} people", f"{rng.randint(1, 30)} days"])


def _news_sentence(rng: random.Random) -> str:
    """A reporting sentence with names and figures, which web text is full of (and which
    keeps the vocabulary growing, as a real corpus's does)."""
    return rng.choice([
        f"{_name(rng)}, a spokesperson for {rng.choice(_ORGS)}, said the figure had reached {_figure(rng)} "
        f"by {rng.randint(1990, 2024)}.",
        f"According to {_name(rng)}, the change affected about {_figure(rng)} in the first year.",
        f"The report by {_name(rng)} and {_name(rng)} was published on {rng.randint(1, 28)} March "
        f"{rng.randint(1990, 2024)}.",
    ])


def news_article(rng: random.Random, sentences: Sequence[str], mean_words: int = 600) -> str:
    """A headline and paragraphs of 2-6 sentences, one paragraph per line, ~``mean_words`` words."""
    target = max(60, int(rng.lognormvariate(0, 0.35) * mean_words))
    lines, n_words = [title(rng, sentences)], 0
    pool = iter(rng.sample(sentences, len(sentences)))  # no sentence twice in one article
    while n_words < target:
        para = [next(pool) for _ in range(rng.randint(2, 6))]
        if rng.random() < 0.4:
            para.insert(rng.randrange(len(para) + 1), _news_sentence(rng))
        lines.append(" ".join(para))
        n_words += lines[-1].count(" ") + 1
    return "\n".join(lines)


JUNK_KINDS = ("menu", "spam", "short", "code", "lorem", "list")


def junk_page(rng: random.Random, sentences: Sequence[str], kind: str) -> str:
    """Text that FineWeb's quality filters remove, of one ``kind`` (see JUNK_KINDS)."""
    if kind == "menu":  # navigation and link lists
        items = ["Home", "About us", "Contact", "Login", "Sign up", "Privacy", "Careers", "Blog", "Shop", "Help"]
        return "\n".join(rng.choice(items) for _ in range(rng.randint(20, 60)))
    if kind == "spam":  # the same lines over and over
        lines = [title(rng, sentences) + "!" for _ in range(3)]
        return "\n".join(rng.choice(lines) for _ in range(rng.randint(30, 80)))
    if kind == "short":
        return rng.choice(sentences)
    if kind == "code":
        body = news_article(rng, sentences, 200).split("\n")
        body.insert(2, "function init() { var x = document.getElementById('main'); return x; }")
        return "\n".join(body)
    if kind == "lorem":
        body = news_article(rng, sentences, 200).split("\n")
        body.insert(1, "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.")
        return "\n".join(body)
    if kind == "list":  # price lists and tables: lines without sentences
        return "\n".join(f"{title(rng, sentences)} - ${rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
                         for _ in range(rng.randint(20, 60)))
    raise ValueError(f"unknown junk kind {kind!r}")


def near_duplicate(rng: random.Random, text: str, edits: int = 3) -> str:
    """``text`` with ``edits`` words replaced by other words of the same text."""
    words = text.split(" ")
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(words) + rng.choice(["s", "ed", "", "ly"])
    return " ".join(words)


FOREIGN = {
    "de": "Die Stadt hat beschlossen, den Park im Sommer für alle Bürger zu öffnen. Viele Familien freuen "
          "sich darauf, dort Zeit zu verbringen. Der Bürgermeister sprach von einem wichtigen Schritt.",
    "fr": "La ville a décidé d'ouvrir le parc à tous les habitants pendant l'été. Beaucoup de familles sont "
          "heureuses de pouvoir y passer du temps. Le maire a parlé d'une étape importante.",
    "es": "La ciudad ha decidido abrir el parque a todos los vecinos durante el verano. Muchas familias están "
          "contentas de poder pasar tiempo allí. El alcalde habló de un paso importante.",
    "it": "La città ha deciso di aprire il parco a tutti i cittadini durante l'estate. Molte famiglie sono "
          "felici di poterci passare del tempo. Il sindaco ha parlato di un passo importante.",
    "pt": "A cidade decidiu abrir o parque a todos os moradores durante o verão. Muitas famílias estão "
          "felizes por poder passar tempo lá. O prefeito falou de um passo importante.",
}


def html_page(rng: random.Random, text: str, url: str) -> str:
    """``text`` (headline, then one paragraph per line) as the article of a busy web page."""
    head, *paras = text.split("\n")
    nav = "".join(f'<li><a href="/{w.lower()}">{w}</a></li>' for w in ("Home", "World", "Sports", "Weather"))
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paras)
    related = "".join(f'<li><a href="/r{i}">{html.escape(title(rng, english_sentences()))}</a></li>'
                      for i in range(4))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(head)}</title>
<style>body {{ font-family: sans-serif; }} .nav {{ color: red; }}</style>
<script>window.dataLayer = window.dataLayer || []; function track() {{ dataLayer.push(arguments); }}</script>
</head><body>
<header><div class="logo">The Daily Example</div><nav class="nav"><ul>{nav}</ul></nav></header>
<div id="cookie-banner">This site uses cookies. <button>Accept all cookies</button></div>
<main><article><h1>{html.escape(head)}</h1>
<div class="byline">By Staff Reporter | {url}</div>
{body}
</article></main>
<aside><h3>Related stories</h3><ul>{related}</ul></aside>
<footer><p>Copyright 2024 The Daily Example. All rights reserved.</p>
<a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a></footer>
<script src="/static/app.js"></script><script>track('pageview');</script>
</body></html>"""


def write_warc(path: str, pages: Sequence[Tuple[str, str]], extra_records: bool = True) -> None:
    """A gzipped WARC of HTTP responses holding ``(url, html)`` pages (and, with
    ``extra_records``, a request record and an image response, which readers must skip)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)

        def response(url, payload, content_type):
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                          http_headers=headers))

        for i, (url, page) in enumerate(pages):
            if extra_records and i == 1:
                request = io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")
                writer.write_record(writer.create_warc_record(url, "request", payload=request))
                response(url + "logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png")
            response(url, page.encode("utf-8"), "text/html; charset=utf-8")


def web_corpus(rng: random.Random, n_docs: int) -> List[dict]:
    """Plain-text web documents: ~65% articles, ~10% near-duplicates, ~5% exact copies,
    ~15% junk, ~5% other languages; each with a ``url``."""
    sents = english_sentences()
    docs: List[dict] = []
    articles: List[str] = []
    for i in range(n_docs):
        r = rng.random()
        if r < 0.10 and articles:
            text, kind = near_duplicate(rng, rng.choice(articles), rng.randint(1, 4)), "near_duplicate"
        elif r < 0.15 and articles:
            text, kind = rng.choice(articles), "exact_duplicate"
        elif r < 0.30:
            kind = rng.choice(JUNK_KINDS)
            text = junk_page(rng, sents, kind)
        elif r < 0.35:
            kind = rng.choice(sorted(FOREIGN))
            text = "\n".join([FOREIGN[kind]] * 3)
        else:
            text, kind = news_article(rng, sents), "article"
            articles.append(text)
        docs.append({"id": f"web-{i}", "url": f"https://news{i % 50}.example.com/story/{i}", "kind": kind,
                     "text": text})
    return docs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--docs", type=int, default=2000, help="documents in articles.jsonl.gz")
    p.add_argument("--pages", type=int, default=200, help="HTML pages in pages.warc.gz")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    os.makedirs(os.path.join(a.output_dir, "notes"), exist_ok=True)
    docs = web_corpus(rng, a.docs)
    with gzip.open(os.path.join(a.output_dir, "articles.jsonl.gz"), "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps(d) + "\n")
            if i == len(docs) // 2:
                f.write('{"id": "broken", "text": "a line cut in the mid\n')  # a malformed record
    sents = english_sentences()
    pages = [(f"https://www.example.org/news/{i}/", html_page(rng, news_article(rng, sents), f"example.org/{i}"))
             for i in range(a.pages)]
    write_warc(os.path.join(a.output_dir, "pages.warc.gz"), pages)
    for i in range(5):
        with open(os.path.join(a.output_dir, "notes", f"note{i}.txt"), "w", encoding="utf-8") as f:
            f.write(news_article(rng, sents) + "\n")
    print(f"wrote {a.docs} documents, {a.pages} pages and 5 notes to {a.output_dir}")


if __name__ == "__main__":
    run_tool(main)
