"""HTML extraction keeps the article and drops page furniture; language ID on short paragraphs
in five languages; both run with the models inside their wheels and never touch the network."""

import socket

import pytest

from data_tools.clean.document import Document
from data_tools.clean.steps import build_step

ARTICLE = [
    "The river authority opened the new flood barrier on Monday after four years of construction.",
    "Engineers said the barrier can hold back water two metres higher than the old wall, which failed twice.",
    "Residents of the low streets near the harbour had campaigned for the work since the storms of 2014.",
]

PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Flood barrier opens</title>
<style>.menu {{ color: red; }} body {{ margin: 0 }}</style>
<script>var tracker = "SCRIPT-SECRET"; function go() {{ return tracker; }}</script>
</head><body>
<header><div class="logo">The Harbour Gazette</div>
<nav class="menu"><ul><li><a href="/">Home</a></li><li><a href="/sport">Sport</a></li>
<li><a href="/weather">Weather</a></li><li><a href="/login">Log in to your account</a></li></ul></nav></header>
<div class="cookie-banner" id="cookies">We use cookies to improve your experience. <button>Accept</button></div>
<main><article><h1>Flood barrier opens after four years</h1>
{"".join(f"<p>{p}</p>" for p in ARTICLE)}
</article></main>
<aside class="sidebar"><h3>Most read</h3><ul><li><a href="/a">Ten recipes for summer evenings</a></li>
<li><a href="/b">Council votes on parking charges again</a></li></ul></aside>
<footer><p>Copyright 2024 The Harbour Gazette. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
<script>go(); console.log("FOOTER-SCRIPT");</script>
</body></html>"""


def run(step, text, **record):
    doc = Document({"text": text, **record}, "text", "t")
    return step.process(doc), doc


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test; models load afresh under that rule."""
    from data_tools.clean.steps.language import load_backend

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_backend.cache_clear()


def test_extraction_keeps_the_article_and_drops_the_page_furniture(no_network):
    reason, doc = run(build_step("extract", {}), PAGE)
    assert reason is None
    for paragraph in ARTICLE:
        assert paragraph in doc.text
    for furniture in ("SCRIPT-SECRET", "FOOTER-SCRIPT", "color: red", "Log in to your account", "Accept",
                      "Ten recipes", "All rights reserved", "The Harbour Gazette"):
        assert furniture not in doc.text
    assert doc.text.count("\n") >= len(ARTICLE) - 1  # paragraphs stay separate lines


def test_extraction_of_pages_without_text_and_of_plain_text():
    step = build_step("extract", {})
    assert run(step, "<html><body><div> </div><script>x()</script></body></html>")[0] == "no_text"
    plain = "Already plain text.\nIt passes through unchanged."
    reason, doc = run(step, plain)
    assert reason is None and doc.text == plain and step.counters["not_html"] == 1


PARAGRAPHS = {
    "en": "The city council decided on Tuesday to keep the public library open on Sundays during the winter.",
    "de": "Der Stadtrat hat am Dienstag beschlossen, die öffentliche Bibliothek im Winter auch sonntags zu öffnen.",
    "fr": "Le conseil municipal a décidé mardi de garder la bibliothèque publique ouverte le dimanche cet hiver.",
    "es": "El ayuntamiento decidió el martes mantener abierta la biblioteca pública los domingos en invierno.",
    "it": "Il consiglio comunale ha deciso martedì di tenere aperta la biblioteca pubblica la domenica in inverno.",
}


@pytest.mark.parametrize("backend", ["fasttext", "langid"])
def test_language_id_on_short_paragraphs(backend, no_network):
    for lang, text in PARAGRAPHS.items():
        step = build_step("language", {"languages": [lang], "backend": backend})
        reason, doc = run(step, text)
        assert reason is None, (lang, doc.record)
        assert doc.record["language"] == lang and doc.record["language_score"] > 0.65
    english_only = build_step("language", {"languages": ["en"], "backend": backend})
    assert run(english_only, PARAGRAPHS["de"])[0] == "language=de"
    assert run(english_only, PARAGRAPHS["en"] + "\n" + PARAGRAPHS["en"])[0] is None  # newlines are fine


def test_language_threshold_and_label_only():
    strict = build_step("language", {"languages": ["en"], "threshold": 0.99})
    reason, doc = run(strict, "ok ok ok")
    assert reason == "low_language_score" and doc.record["language_score"] < 0.99
    label = build_step("language", {"label_only": True, "languages": ["en"]})
    reason, doc = run(label, PARAGRAPHS["fr"])
    assert reason is None and doc.record["language"] == "fr"


def test_url_domains_need_no_network(no_network):
    step = build_step("url_filter", {"blocked_domains": ["example.co.uk"]})
    assert run(step, "x", url="https://news.example.co.uk/a")[0] == "blocked_domain"
    assert run(step, "x", url="https://example.com/a")[0] is None
