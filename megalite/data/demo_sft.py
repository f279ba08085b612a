"""A small instruction set from real public text that ships with Python, for SFT demos and tests.

CPython carries its language reference as plain text (``pydoc_data.topics``, what ``help()``
shows). Each section becomes "Explain <section title>." answered by its opening paragraph, and
each further paragraph "In '<title>', what comes after: <previous paragraph>" answered by the
paragraph itself: alpaca records (instruction / input / output) with real English answers.
"""

import re
from typing import Dict, Iterator, List, Tuple

_RULE = re.compile(r"([=*\-])\1{3,}")


def sections() -> Iterator[Tuple[str, List[str]]]:
    """(title, paragraphs) for every titled section of the language reference topics."""
    import pydoc_data.topics

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


def instruction_pairs(max_chars: int = 400) -> List[Dict[str, str]]:
    """Alpaca-format records, answers cut at a sentence end within ``max_chars``."""

    def cut(text):
        if len(text) <= max_chars:
            return text
        head = text[:max_chars]
        stop = head.rfind(". ")
        return head[: stop + 1] if stop > 40 else head

    out = []
    for title, paragraphs in sections():
        out.append({"instruction": f"Explain {title}.", "input": "", "output": cut(paragraphs[0])})
        for before, after in zip(paragraphs, paragraphs[1:]):
            out.append({"instruction": f"In the Python reference section \"{title}\", what comes after this "
                                       f"paragraph?", "input": cut(before), "output": cut(after)})
    return out
