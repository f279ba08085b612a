"""Gopher's repetition filter (Rae et al. 2021, table A1), with FineWeb's thresholds.

Removes documents whose lines or paragraphs repeat, whose most frequent 2/3/4-gram covers too
much of the text, or whose repeated 5..10-grams do.
"""

import re
from typing import Dict, Optional

from data_tools.clean.steps.base import Step
from data_tools.clean.textstats import NGramRepetition, duplicates

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
TOP_N_GRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_N_GRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class GopherRepetition(Step):
    """Thresholds are maximum fractions; a ``None`` threshold turns that check off.

    ``top_n_grams`` / ``dup_n_grams`` map n to the largest fraction of the text's characters
    that the top n-gram (all its occurrences) / the repeated n-grams may cover.
    """

    name = "gopher_repetition"

    def __init__(self, dup_line_frac: Optional[float] = 0.3, dup_para_frac: Optional[float] = 0.3,
                 dup_line_char_frac: Optional[float] = 0.2, dup_para_char_frac: Optional[float] = 0.2,
                 top_n_grams: Optional[Dict[int, float]] = None, dup_n_grams: Optional[Dict[int, float]] = None):
        super().__init__()
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams = sorted((TOP_N_GRAMS if top_n_grams is None else top_n_grams).items())
        self.dup_n_grams = sorted((DUP_N_GRAMS if dup_n_grams is None else dup_n_grams).items())
        if self.top_n_grams and self.dup_n_grams and self.top_n_grams[-1][0] >= self.dup_n_grams[0][0]:
            raise ValueError("gopher_repetition: every top_n_grams n must be below every dup_n_grams n")

    def process(self, doc) -> Optional[str]:
        text = doc.text
        if not text:
            return "empty"
        blank_lines = "\n\n" in text
        paragraphs = _PARAGRAPHS.split(text.strip()) if blank_lines else [text.strip()]
        n_dup, dup_chars = duplicates(paragraphs)
        if self.dup_para_frac is not None and n_dup / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and dup_chars / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _LINES.split(text) if blank_lines else text.split("\n")
        n_dup, dup_chars = duplicates(lines)
        if self.dup_line_frac is not None and n_dup / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and dup_chars / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"

        ngrams = NGramRepetition(doc.view.prop("random"), doc.view.prop("length"))
        for n, frac in self.top_n_grams:
            if ngrams.top_chars(n) / len(text) > frac:
                return f"top_{n}_gram"
        if self.dup_n_grams:
            first, last = self.dup_n_grams[0][0], self.dup_n_grams[-1][0]
            cover = ngrams.repeat_cover_chars(first, last)
            if all(cover / len(text) <= frac for _, frac in self.dup_n_grams):
                return None  # not even a generous bound on any of them is too high
        for n, frac in self.dup_n_grams:
            too_many = lambda chars: chars / len(text) > frac  # noqa: E731
            if too_many(ngrams.greedy_duplicate_chars(n, too_many)):
                return f"duplicated_{n}_n_grams"
        return None
