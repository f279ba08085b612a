"""Unicode and whitespace normalisation, so later filters and dedup see one spelling.

NFC composition (or NFKC), control characters removed, Windows and old-Mac line ends made
``\n``, runs of spaces and tabs made one space, spaces at line ends removed, at most
``max_blank_lines`` blank lines in a row. Documents left empty are removed.

``width`` (on by default) makes full-width Latin letters and digits half-width (ＡＢＣ１２３ ->
ABC123) and half-width katakana full-width, and keeps the full-width punctuation that
Chinese and Japanese are written with (，。！？), which NFKC would make ASCII.
"""

import re
import unicodedata
from typing import Optional

from data_tools.clean.cjk import normalize_width
from data_tools.clean.steps.base import Step

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_LINE_END_SPACES = re.compile(r" *\n *")


class Normalize(Step):
    name = "normalize"

    def __init__(self, form: str = "NFC", max_blank_lines: int = 1, width: bool = True):
        super().__init__()
        if form not in ("NFC", "NFKC", "NFD", "NFKD", "none"):
            raise ValueError(f"normalize: form must be NFC, NFKC, NFD, NFKD or none, not {form!r}")
        self.form, self.max_blank_lines, self.width = form, max_blank_lines, width
        self._blank_runs = re.compile(r"\n{%d,}" % (max_blank_lines + 2))

    def process(self, doc) -> Optional[str]:
        text = doc.text
        if not text.isascii():
            if self.form != "none":
                text = unicodedata.normalize(self.form, text)
            if self.width:
                text = normalize_width(text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        text = _LINE_END_SPACES.sub("\n", _SPACES.sub(" ", text))
        text = self._blank_runs.sub("\n" * (self.max_blank_lines + 1), text).strip()
        if not text:
            return "empty"
        if text != doc.text:
            self.count("changed")
            doc.set_text(text)
        return None
