"""A small instruction set from real public text that ships with Python, for SFT demos and tests.

CPython carries its language reference as plain text (``pydoc_data.topics``, what ``help()``
shows). Each section becomes "Explain <section title>." answered by its opening paragraph, and
each further paragraph "In '<title>', what comes after: <previous paragraph>" answered by the
paragraph itself: alpaca records (instruction / input / output) with real English answers.
``preference_pairs`` asks the same next-paragraph questions as DPO pairs, the true paragraph
chosen over a corrupted one (its words shuffled) or a mismatched one (from another section).
"""

import pydoc_data.topics
import random
import re
from typing import Dict, Iterator, List, Tuple

_RULE = re.compile(r"([=*\-])\1{3,}")


def sections() -> Iterator[Tuple[str, List[str]]]:
    """(title, paragraphs) for every titled section of the language reference topics."""
    for _, text in sorted(pydoc_data.topics.topics.items()):
        lines = text.split("\n")
        heads = [i for i in range(1, len(lines)) if _RULE.fullmatch(lines[i]) and lines[i - 1].strip()]
        for n, i in enumerate(heads):
            end = heads[n + 1] - 1 if n + 1 < len(heads) else len(lines)
            paragraphs, current = [], []
            for line in lines[i + 1 : end] + [""]:
                if line.strip():
                    current.append(line.strip())
                elif current:
                    paragraphs.append(" ".join(current))
                    current = []
            if paragraphs:
                yield lines[i - 1].strip(), paragraphs


def cut(text: str, max_chars: int) -> str:
    """``text``, or its head up to a sentence end within ``max_chars``."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    stop = head.rfind(". ")
    return head[: stop + 1] if stop > 40 else head


def next_paragraph_question(title: str) -> str:
    return f"In the Python reference section \"{title}\", what comes after this paragraph?"


def instruction_pairs(max_chars: int = 400) -> List[Dict[str, str]]:
    """Alpaca-format records, answers cut at a sentence end within ``max_chars``."""
    out = []
    for title, paragraphs in sections():
        out.append({"instruction": f"Explain {title}.", "input": "", "output": cut(paragraphs[0], max_chars)})
        for before, after in zip(paragraphs, paragraphs[1:]):
            out.append({"instruction": next_paragraph_question(title), "input": cut(before, max_chars),
                        "output": cut(after, max_chars)})
    return out


REJECTED = ("shuffled", "mismatched")


def preference_pairs(max_chars: int = 300, seed: int = 0, rejected: str = "shuffled") -> List[Dict[str, object]]:
    """DPO pairs (trl's conversational format) for the same next-paragraph questions: chosen is
    the paragraph that really follows; rejected is that paragraph with its words shuffled
    (``shuffled``: fluent against broken text, learnable by a small model) or a paragraph drawn
    from another section (``mismatched``: right against wrong content, much harder). Seeded."""
    rng = random.Random(seed)
    found = list(sections())
    out = []
    for n, (title, paragraphs) in enumerate(found):
        for before, after in zip(paragraphs, paragraphs[1:]):
            other = found[(n + rng.randrange(1, len(found))) % len(found)][1]
            question = next_paragraph_question(title) + "\n" + cut(before, max_chars)
            chosen = cut(after, max_chars)
            if rejected == "shuffled":
                words = chosen.split()
                rng.shuffle(words)
                wrong = " ".join(words)
            else:
                wrong = cut(rng.choice(other), max_chars)
            if chosen != wrong:  # one-word paragraphs; paragraphs that recur verbatim in several sections
                out.append({"prompt": [{"role": "user", "content": question}],
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": wrong}]})
    return out
