"""Offline lm-eval tasks built from real English prose that ships with CPython: the
documentation topics of ``pydoc_data.topics`` (the text behind ``help('if')``).

Each function is a task's ``custom_dataset``: it builds the documents deterministically
from the installed Python, so the tasks run with no hub and no files to download.
"""

import random
import re

import datasets

_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.])\s+(?=[A-Z])")


def _paragraphs():
    """(topic, paragraph) for every prose paragraph of every topic, in a fixed order."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            text = " ".join(line.strip() for line in para.splitlines())
            if len(text) > 120 and not para.startswith(" ") and text[0].isupper() and "::" not in text:
                out.append((name, text))
    return out


def _sentence_pairs():
    """(topic, first sentence, next sentence) from paragraphs of two or more sentences."""
    pairs = []
    for name, text in _paragraphs():
        sentences = _SENTENCE_END.split(text)
        if len(sentences) >= 2 and 20 < len(sentences[0]) < 300 and 20 < len(sentences[1]) < 300:
            pairs.append((name, sentences[0], sentences[1]))
    return pairs


def _split(rows, train=50):
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:train]),
                                 "test": datasets.Dataset.from_list(rows[train:])})


def next_sentence_choice(**kwargs):
    """Pick the sentence that follows a documentation sentence among four (three distractors
    come from other topics)."""
    pairs = _sentence_pairs()
    rng = random.Random(0)
    rows = []
    for i, (name, first, second) in enumerate(pairs):
        others = [p[2] for p in rng.sample(pairs, 8) if p[0] != name and p[2] != second][:3]
        choices = others + [second]
        rng.shuffle(choices)
        rows.append({"id": i, "topic": name, "context": first, "choices": choices, "label": choices.index(second)})
    return _split(rows)


def next_word(**kwargs):
    """Predict the last word of a documentation sentence (LAMBADA-style)."""
    rows = []
    for i, (name, first, _) in enumerate(_sentence_pairs()):
        head, _, last = first.rstrip(".").rpartition(" ")
        if head and last.isalpha():
            rows.append({"id": i, "topic": name, "context": head, "target": " " + last})
    return _split(rows)


def paragraphs(**kwargs):
    """Whole documentation paragraphs, scored for perplexity (wikitext-style)."""
    rows = [{"id": i, "topic": name, "text": text} for i, (name, text) in enumerate(_paragraphs())]
    return _split(rows)


def continue_sentence(**kwargs):
    """Continue the first words of a documentation sentence up to its end (exact match)."""
    rows = []
    for i, (name, first, _) in enumerate(_sentence_pairs()):
        words = first.split(" ")
        if len(words) >= 6:
            rows.append({"id": i, "topic": name, "prompt": " ".join(words[:4]), "answer": " " + " ".join(words[4:])})
    return _split(rows)
